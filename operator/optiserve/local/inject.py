"""Regressions on purpose: ``--inject`` values, applied to a copy of a model repository.

``optiserve run --inject latency=2x|errors=5%|accuracy-drop`` makes the candidate regress so a
rollback can be shown. The values become ``inject_*`` parameters in each model's
``config.pbtxt`` (rewritten through Triton's protobuf schema), which the OptiServe
Python-backend model (``optiserve_jobs.triton_python_model``) acts on:

==================  ===========================  =======================================
``--inject``        parameter                    effect
==================  ===========================  =======================================
``latency=2x``      ``inject_latency_factor``    every batch takes 2x as long
``errors=5%``       ``inject_error_fraction``    every 20th request answers an error
``accuracy-drop``   ``inject_output_noise``      outputs perturbed (cosine about 0.71)
==================  ===========================  =======================================

``accuracy-drop=0.3`` sets the relative noise norm itself (cosine about ``1/sqrt(1+0.3^2)``).
"""

from __future__ import annotations

import functools
import math
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from optiserve.resources.triton_config import parse_model_config, render_model_config

LATENCY_PARAMETER = "inject_latency_factor"
ERRORS_PARAMETER = "inject_error_fraction"
NOISE_PARAMETER = "inject_output_noise"
DEFAULT_OUTPUT_NOISE = 1.0
"""Relative noise of a plain ``accuracy-drop``: cosine to the true embedding about 0.71."""

_USAGE = "latency=2x, errors=5% or accuracy-drop[=NOISE]"


class InjectionError(ValueError):
    """A bad ``--inject`` value, or a repository it cannot be applied to; the message names which."""


@dataclass(frozen=True)
class Injection:
    """The regressions to make; None leaves that one off."""

    latency_factor: float | None = None
    error_fraction: float | None = None
    output_noise: float | None = None

    def parameters(self) -> dict[str, str]:
        """The model config ``parameters`` that make these regressions."""
        values = {
            LATENCY_PARAMETER: self.latency_factor,
            ERRORS_PARAMETER: self.error_fraction,
            NOISE_PARAMETER: self.output_noise,
        }
        return {key: repr(value) for key, value in values.items() if value is not None}

    def __str__(self) -> str:
        parts = []
        if self.latency_factor is not None:
            parts.append(f"latency={self.latency_factor:g}x")
        if self.error_fraction is not None:
            parts.append(f"errors={self.error_fraction * 100:g}%")
        if self.output_noise is not None:
            parts.append(f"accuracy-drop={self.output_noise:g}")
        return ", ".join(parts) or "nothing"


def _number(option: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InjectionError(f"--inject {option}: {text!r} is not a number ({_USAGE})") from None
    if not math.isfinite(value):
        raise InjectionError(f"--inject {option}: {text!r} is not a finite number")
    return value


def _latency(option: str, text: str) -> Injection:
    factor = _number(option, text[:-1] if text.lower().endswith("x") else text)
    if not 1.0 < factor <= 1000.0:
        raise InjectionError(f"--inject {option}: the factor must be above 1 and at most 1000 (2x doubles the time)")
    return Injection(latency_factor=factor)


def _errors(option: str, text: str) -> Injection:
    fraction = _number(option, text[:-1]) / 100.0 if text.endswith("%") else _number(option, text)
    if not 0.0 < fraction <= 1.0:
        raise InjectionError(f"--inject {option}: the error fraction must be above 0 and at most 100% (5% or 0.05)")
    return Injection(error_fraction=fraction)


def _accuracy(option: str, text: str | None) -> Injection:
    noise = DEFAULT_OUTPUT_NOISE if text is None else _number(option, text)
    if not 0.0 < noise <= 1000.0:
        raise InjectionError(f"--inject {option}: the relative noise must be above 0 and at most 1000")
    return Injection(output_noise=noise)


def parse_inject(option: str) -> Injection:
    """One ``--inject`` value: ``latency=2x``, ``errors=5%``, ``accuracy-drop`` or ``accuracy-drop=0.5``."""
    kind, equals, value = option.strip().partition("=")
    kind, value = kind.strip().lower(), value.strip()
    if kind == "latency" and equals and value:
        return _latency(option, value)
    if kind == "errors" and equals and value:
        return _errors(option, value)
    if kind == "accuracy-drop" and (not equals or value):
        return _accuracy(option, value if equals else None)
    if kind in ("latency", "errors", "accuracy-drop"):
        raise InjectionError(f"--inject {option}: missing value ({_USAGE})")
    raise InjectionError(f"--inject {option}: unknown kind {kind!r} (expected {_USAGE})")


def parse_injections(options: Iterable[str]) -> Injection:
    """Several ``--inject`` values together; each kind at most once."""
    combined = Injection()
    for option in options:
        single = parse_inject(option)
        for name in ("latency_factor", "error_fraction", "output_noise"):
            value = getattr(single, name)
            if value is None:
                continue
            if getattr(combined, name) is not None:
                raise InjectionError(f"--inject {option}: {option.partition('=')[0]} is given more than once")
            combined = replace(combined, **{name: value})
    return combined


def inject_config(config: mc.ModelConfig, injection: Injection) -> mc.ModelConfig:
    """A copy of ``config`` whose ``parameters`` make the regressions; only the Python backend acts on them."""
    if config.backend != "python":
        raise InjectionError(
            f"model {config.name!r}: injection needs the OptiServe Python-backend model, this one has backend {config.backend!r}"
        )
    injected = mc.ModelConfig()
    injected.CopyFrom(config)
    for key, value in injection.parameters().items():
        injected.parameters[key].string_value = value
    if injection.error_fraction is not None:
        # Triton refuses to load a model whose warm-up sample fails: the injected errors would
        # stop the candidate from starting at all instead of showing up in its traffic.
        del injected.model_warmup[:]
    return injected


def _check_model_code(model_dir: Path, injection: Injection) -> None:
    """Refuse a repository whose model.py predates injection: it would ignore the parameters silently."""
    scripts = sorted(model_dir.glob("*/model.py"))
    if not scripts:
        raise InjectionError(f"model {model_dir.name!r}: no <version>/model.py in {model_dir}")
    for script in scripts:
        text = script.read_text(encoding="utf-8", errors="replace")
        missing = [key for key in injection.parameters() if key not in text]
        if missing:
            raise InjectionError(
                f"model {model_dir.name!r}: {script.relative_to(model_dir)} does not read {', '.join(missing)}; "
                "re-publish the repository with this version (optiserve optimize)"
            )


def inject_in_place(repository: Path, injection: Injection) -> None:
    """Rewrite every model's ``config.pbtxt`` in ``repository`` (a copy the caller owns).

    Every config is checked before any is written, so a refused repository is left as it was.
    """
    if not injection.parameters():
        raise InjectionError("nothing to inject")
    config_paths = sorted(repository.glob("*/config.pbtxt"))
    if not config_paths:
        raise InjectionError(f"model repository {repository} has no <model>/config.pbtxt")
    rewritten: dict[Path, str] = {}
    for config_path in config_paths:
        try:
            config = parse_model_config(config_path.read_text())
        except text_format.ParseError as e:
            raise InjectionError(f"{config_path.relative_to(repository)}: not a Triton model config: {e}") from e
        injected = inject_config(config, injection)
        _check_model_code(config_path.parent, injection)
        rewritten[config_path] = render_model_config(injected)
    for config_path, text in rewritten.items():
        config_path.write_text(text)


def inject_repository(source: Path, destination: Path, injection: Injection) -> Path:
    """Copy the model repository ``source`` to ``destination`` with every model's config injected.

    The source is left untouched; ``destination`` must not exist yet.
    """
    if not source.is_dir():
        raise InjectionError(f"model repository {source} is not a directory")
    if destination.exists():
        raise InjectionError(f"{destination} already exists; injection writes a fresh copy")
    shutil.copytree(source, destination)
    try:
        inject_in_place(destination, injection)
    except BaseException:
        shutil.rmtree(destination, ignore_errors=True)
        raise
    return destination


def injector_for(options: Sequence[str]) -> Callable[[Path], None] | None:
    """What ``optiserve run`` applies to the candidate's repository copy; None without ``--inject``.

    Raises :class:`InjectionError` (a ``ValueError``) naming the bad value.
    """
    injection = parse_injections(options)
    if not injection.parameters():
        return None
    return functools.partial(inject_in_place, injection=injection)
