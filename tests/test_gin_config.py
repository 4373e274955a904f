"""Gin flags in the T5X convention: files, bindings, shorthand, required macros."""

import gin
import pytest

from explore import gin_config
from explore import main  # noqa: F401  (registers RunConfig)
from explore import partitioning  # noqa: F401  (registers MeshConfig)
from explore import stages
import toy_stages  # noqa: F401  (registers toy configurables)

stages.load_builtin_stages()  # the configurables that quickstart.gin binds


pytestmark = pytest.mark.usefixtures("clean_gin")


def test_shorthand_becomes_a_binding():
  argv = gin_config.rewrite_gin_args(["explore", "run", "--gin.RUN_DIR='/tmp/x'", "--force"])
  assert argv == ["explore", "run", "--gin_bindings=RUN_DIR = '/tmp/x'", "--force"]


@pytest.mark.parametrize("arg", ["--gin.RUN_DIR", "--gin.=3", "--gin.X="])
def test_malformed_shorthand_is_named(arg):
  with pytest.raises(gin_config.ConfigError, match=f"malformed flag {arg!r}"):
    gin_config.rewrite_gin_args([arg])


def test_later_files_win_and_bindings_apply_last(tmp_path):
  (tmp_path / "a.gin").write_text("toy_alpha_values.size = 1\n")
  (tmp_path / "b.gin").write_text("toy_alpha_values.size = 2\n")
  gin_config.parse_gin(["a.gin", "b.gin"], [], [str(tmp_path)])
  assert gin.query_parameter("toy_alpha_values.size") == 2
  gin.clear_config()
  gin_config.parse_gin(["a.gin", "b.gin"], ["toy_alpha_values.size = 9"], [str(tmp_path)])
  assert gin.query_parameter("toy_alpha_values.size") == 9


def test_package_configs_are_always_searched():
  files = gin_config.parse_gin(["quickstart.gin"], ["RUN_DIR = '/tmp/q'"])
  assert files[0].name == "quickstart.gin"
  assert gin.query_parameter("%RUN_DIR") == "/tmp/q"


def test_missing_required_macro_names_the_declaring_file(tmp_path):
  (tmp_path / "run.gin").write_text("include 'base.gin'\n")
  with pytest.raises(gin_config.ConfigError,
                     match=r"RUN_DIR is not set \(declared %gin.REQUIRED in .*base.gin\)"):
    gin_config.parse_gin(["run.gin"], [], [str(tmp_path)])


def test_unknown_binding_is_named():
  with pytest.raises(gin_config.ConfigError, match="gin binding 'no_such_thing.x = 1'"):
    gin_config.parse_gin([], ["no_such_thing.x = 1"])


def test_unknown_parameter_of_known_configurable_is_named():
  with pytest.raises(gin_config.ConfigError, match="toy_alpha_values.nope = 1"):
    gin_config.parse_gin([], ["toy_alpha_values.nope = 1"])


def test_missing_gin_file_lists_where_it_looked(tmp_path):
  with pytest.raises(gin_config.ConfigError, match="gin file 'absent.gin' not found"):
    gin_config.parse_gin(["absent.gin"], [], [str(tmp_path)])


def test_canonical_value_expands_references():
  gin.parse_config("N = 5\ntoy_alpha_values.size = %N\ntoy_beta_scale.scale = 3")
  assert gin_config.configurable_bindings("toy_alpha_values") == {"fail": False, "size": 5}
  assert gin_config.configurable_bindings("toy_beta_scale") == {"scale": 3}


def test_code_defaults_count_and_binding_a_default_changes_nothing():
  defaults = gin_config.configurable_bindings("toy_alpha_values")
  gin.parse_config("toy_alpha_values.size = 3")
  assert gin_config.configurable_bindings("toy_alpha_values") == defaults == {
      "fail": False, "size": 3}
