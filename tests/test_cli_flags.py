"""Cloak settings on the command line: one generated flag per CloakConfig field,
the same for `cloak` and `migrate`, and typed as the field is; the engine's
settings (EngineSettings) built the same from flags as from API keywords."""

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from jaxcloak import cli, flags
from jaxcloak.config import CloakConfig, EngineSettings, PRESETS


def _help(command: str) -> str:
  parser = cli.build_parser()
  sub = next(a for a in parser._actions if a.dest == "command")
  return sub.choices[command].format_help()


def _flags_in(text: str) -> set[str]:
  return set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", text))


def test_migrate_help_lists_every_cloak_flag_cloak_help_lists():
  cloak, migrate = _flags_in(_help("cloak")), _flags_in(_help("migrate"))
  assert set(flags.flag_names()) <= cloak
  own = {"--output", "--samples", "--report"}  # where cloak writes; migrate's is DST
  assert cloak - own <= migrate, sorted(cloak - own - migrate)


def test_every_config_field_has_a_flag():
  names = flags.flag_names()
  for f in dataclasses.fields(CloakConfig):
    dashed = f.name.replace("_", "-")
    assert f"--{dashed}" in names or f"--no-{dashed}" in names, f.name
  assert len(names) == len(dataclasses.fields(CloakConfig)) + 1  # and --preset


def test_flags_parse_as_their_fields_and_override_the_preset_only_when_given():
  parser = cli.build_parser()
  args = parser.parse_args(["cloak", "x.jpg", "-o", "out", "--preset", "high",
                            "--view-kinds", "blur,jpeg", "--extractors", "dlib,sface",
                            "--extractor-weights", "1,2", "--no-jpeg-aware", "--views", "2",
                            "--ensemble", "mean", "--max-pixel-change", "0.05"])
  c = flags.config_from_flags(args)
  assert c.view_kinds == ("blur", "jpeg") and c.extractors == ("dlib", "sface")
  assert c.extractor_weights == (1.0, 2.0) and c.jpeg_aware is False and c.views == 2
  assert c.ensemble == "mean" and c.max_pixel_change == 0.05
  high = PRESETS["high"]
  assert (c.budget, c.steps) == (high["budget"], high["steps"])  # untouched fields: the preset's
  plain = flags.config_from_flags(parser.parse_args(["cloak", "x.jpg", "-o", "out"]))
  assert plain == flags.config_from_flags(parser.parse_args(["migrate", "a", "b"]))


def test_an_optional_field_can_be_cleared_from_the_command_line():
  parser = cli.build_parser()
  args = parser.parse_args(["migrate", "a", "b", "--local-budget", "0.02"])
  assert flags.config_from_flags(args).local_budget == 0.02
  args = parser.parse_args(["migrate", "a", "b", "--local-budget", "off"])
  assert flags.config_from_flags(args).local_budget is None


def test_help_comes_from_the_field_comments():
  text = " ".join(_help("migrate").split())
  assert "faces narrower than this (pixels) are reported, not cloaked" in text
  assert "DSSIM cap on the worst block of a face" in text


@pytest.mark.parametrize("command", ["cloak", "migrate"])
@pytest.mark.parametrize("bad, says", [(["--budget", "2"], "budget"),
                                       (["--views", "x"], "invalid int value"),
                                       (["--view-kinds", "blurr"], "unknown view kinds")])
def test_bad_cloak_flag_values_are_one_error_line(command, bad, says, tmp_path):
  src = tmp_path / "src"
  src.mkdir()
  args = ([str(src), "-o", str(tmp_path / "out")] if command == "cloak"
          else [str(src), str(tmp_path / "dst")]) + ["--mode", "untargeted"] + bad
  r = subprocess.run([sys.executable, "-m", "jaxcloak", command, *args], capture_output=True,
                     text=True, timeout=120)
  assert r.returncode == 2, r.stderr
  lines = r.stderr.strip().splitlines()
  assert "Traceback" not in r.stderr and says in lines[-1] and "error:" in lines[-1]
  assert not (tmp_path / "dst").exists() and not (tmp_path / "out").exists()


def test_compile_cache_is_on_by_default_and_can_be_moved_or_turned_off(tmp_path, monkeypatch):
  from jaxcloak import compile_cache
  monkeypatch.delenv(compile_cache.ENV, raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert compile_cache.resolve(None) == tmp_path / "xdg" / "jaxcloak" / "xla"
  monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "env"))
  assert compile_cache.resolve(None) == tmp_path / "env"
  assert compile_cache.resolve(str(tmp_path / "flag")) == tmp_path / "flag"  # the flag wins
  monkeypatch.setenv(compile_cache.ENV, "off")
  assert compile_cache.resolve(None) is None and compile_cache.resolve("off") is None


def test_compiled_programs_land_in_the_persistent_cache(tmp_path):
  """A real compile in a fresh process writes an entry where `enable` pointed JAX."""
  code = ("import sys, jax, jax.numpy as jnp; from jaxcloak import compile_cache; "
          "compile_cache.MIN_COMPILE_SECONDS = 0; "
          "compile_cache.enable(compile_cache.resolve(sys.argv[1])); "
          "f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum()); print(float(f(jnp.ones((64, 64)))))")
  folder = tmp_path / "xla"
  r = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True,
                     timeout=120)
  assert r.returncode == 0, r.stderr
  assert [p for p in folder.rglob("*") if p.is_file()], "nothing was written to the cache"


def _captured(monkeypatch, module, name: str) -> list:
  """Replaces module.name (a driver) by one that records (config, keywords) and does nothing."""
  calls = []
  monkeypatch.setattr(module, name, lambda *a, **kw: calls.append((a[2], kw)) or {})
  return calls


def _records(call) -> tuple:
  """What a migrate driver was given that a flag or keyword decides (not log or progress)."""
  config, kw = call
  return config, kw["options"], kw["settings"], kw["pool_dir"]


@pytest.mark.parametrize("argv, keywords", [
    ([], {}),
    (["--max-pixels", "5000000", "--detect-side", "320", "--strip-metadata", "--weights-dir",
      "{tmp}/w", "--steps", "3", "--chunk", "4", "--max-faces", "2", "--user", "u",
      "--pool", "{tmp}/pool"],
     dict(max_pixels=5_000_000, detect_side=320, strip_metadata=True, weights_dir="{tmp}/w",
          steps=3, chunk=4, max_faces=2, user="u", pool="{tmp}/pool")),
])
@pytest.mark.parametrize("ray", [False, True])
def test_api_and_cli_migrate_build_the_same_settings(tmp_path, monkeypatch, argv, keywords, ray):
  """`jaxcloak migrate` and `jaxcloak.migrate` hand their driver the same records
  (CloakConfig, job.Options, EngineSettings) for the same inputs, in process or on Ray."""
  import jaxcloak
  if ray:
    pytest.importorskip("ray")
    from jaxcloak.pipeline import ray_runner as driver
  else:
    from jaxcloak.pipeline import migrate as driver
  calls = _captured(monkeypatch, driver, "migrate")
  (tmp_path / "src").mkdir()
  (tmp_path / "pool").mkdir()
  argv = [a.replace("{tmp}", str(tmp_path)) for a in argv] + (["--ray", "auto"] if ray else [])
  keywords = {k: v.replace("{tmp}", str(tmp_path)) if isinstance(v, str) else v
              for k, v in keywords.items()}
  if "weights_dir" in keywords:
    keywords["weights_dir"] = Path(keywords["weights_dir"])  # a Path or its text: the same
  src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
  assert cli.main(["migrate", src, dst, "--quiet", *argv]) == 0
  jaxcloak.migrate(src, dst, ray="auto" if ray else None, **keywords)
  assert len(calls) == 2
  assert _records(calls[0]) == _records(calls[1])
  config, options, settings, _ = _records(calls[0])
  assert config.mode == ("targeted" if "pool" in keywords else "untargeted")
  if keywords:
    assert settings == EngineSettings(max_pixels=5_000_000, detect_side=320,
                                      strip_metadata=True, weights_dir=str(tmp_path / "w"))
    assert (options.chunk, options.max_faces, options.user, config.steps) == (4, 2, "u", 3)
  else:
    assert settings == EngineSettings()


def test_api_and_cli_cloak_build_the_same_engine(tmp_path, monkeypatch, capsys):
  """`jaxcloak cloak` and `jaxcloak.cloak` build the same engine; the mode a person left
  out follows the pool in one place, which says so once."""
  import jaxcloak
  from jaxcloak.pipeline import cloaker, local
  engines = []
  monkeypatch.setattr(cloaker, "Cloaker", lambda config, settings: engines.append(
      (config, settings)))
  monkeypatch.setattr(local, "cloak_photos", lambda *a, **kw: {})
  (tmp_path / "in").mkdir()
  (tmp_path / "in" / "a.jpg").write_bytes(b"not decoded here")
  argv = ["--max-pixels", "1000", "--strip-metadata", "--views", "2"]
  assert cli.main(["cloak", str(tmp_path / "in"), "-o", str(tmp_path / "out"), *argv]) == 0
  assert capsys.readouterr().err.count("no pool given: using the untargeted objective") == 1
  jaxcloak.cloak([tmp_path / "in"], tmp_path / "out", max_pixels=1000, strip_metadata=True,
                 views=2)
  assert engines[0] == engines[1]
  assert engines[0][1] == EngineSettings(max_pixels=1000, strip_metadata=True)
  assert engines[0][0].mode == "untargeted" and engines[0][0].views == 2
  with pytest.raises(TypeError, match="not both"):
    jaxcloak.cloak([tmp_path / "in"], tmp_path / "out", settings=EngineSettings(),
                   max_pixels=1000)
