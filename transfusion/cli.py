"""The ``transfusion`` command line: a thin Typer front over the library.

Commands: ``info`` (versions, threads, extension build, devices), ``check`` (compiled ops against
their references), and the ``run`` group with one command per paper experiment.
"""
from __future__ import annotations

import json
import time

import typer

from transfusion.environment import environment_info

app = typer.Typer(
    help="Reproduce and extend 'Transfusion: Understanding Transfer Learning for Medical Imaging'.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
run_app = typer.Typer(
    help="Run one experiment of the paper (each writes runs/ and results/<experiment>/).",
    no_args_is_help=True,
)
app.add_typer(run_app, name="run")


@app.command()
def info(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text.")) -> None:
    """Versions, threads, what the extension was built with (CPU, CUDA, arch) and CUDA devices."""
    data = environment_info()
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    ext = data["extension"]
    typer.echo(f"transfusion {data['transfusion']}  python {data['python']}  torch {data['torch']} "
               f"(CUDA {data['torch_cuda'] or 'none'})  numpy {data['numpy']}")
    typer.echo(f"platform     {data['platform']}, {data['threads']} torch threads")
    if ext["extension"]:
        cuda = f"yes, archs {ext['cuda_archs']}" if ext["cuda"] else f"none ({ext['reason']})"
        typer.echo(f"extension    transfusion._C loaded; CPU kernels: {ext['cpu_capability']}; "
                   f"CUDA kernels: {cuda}")
        typer.echo(f"cpu outputs  freed op outputs >= 2 MiB kept for reuse up to "
                   f"{ext['cpu_output_cache_limit_mib']} MiB (TRANSFUSION_CPU_OUTPUT_CACHE_MIB)")
    else:
        typer.echo(f"extension    NOT loaded: {ext['reason']}")
    if data["cuda_devices"]:
        for d in data["cuda_devices"]:
            typer.echo(f"cuda:{d['index']}       {d['name']}, {d['memory_gib']} GiB, sm {d['capability']}")
    else:
        typer.echo("cuda         no CUDA device visible")


@app.command()
def check(
    device: str = typer.Option("cpu", help="Device to check on: cpu or cuda."),
    size: int = typer.Option(56, help="Spatial size of the test activation (N=8, C=64)."),
) -> None:
    """Run each compiled op against its float64 reference on random input; print error and speed."""
    import torch

    from transfusion import ops
    from transfusion.ops import dispatch, reference

    x = torch.randn(8, 64, size, size, device=device)
    scale, shift = torch.rand(64, device=device) + 0.5, torch.randn(64, device=device)
    fast = ops.scale_shift_relu(x, scale, shift)
    ref = reference.scale_shift_relu(x, scale, shift)
    err = (fast.double() - ref.double()).abs().max().item()

    def timed(fn, reps=20):
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / reps

    t_op = timed(lambda: ops.scale_shift_relu(x, scale, shift))
    t_eager = timed(lambda: torch.relu(x * scale[None, :, None, None] + shift[None, :, None, None]))
    kernel = "compiled kernel" if dispatch.has_kernel("scale_shift_relu", x) else "pure-torch fallback"
    typer.echo(f"scale_shift_relu on {device} ({kernel}): max |error| vs float64 reference "
               f"{err:.2e}; {t_eager / t_op:.2f}x the speed of eager torch")
    if err > 1e-5:
        raise typer.Exit(code=1)


# `transfusion train` and `transfusion pretrain` (transfusion.train.cli)
from transfusion.train.cli import register as _register_train  # noqa: E402

_register_train(app)

# `transfusion data ...` (transfusion.data.cli)
from transfusion.data.cli import data_app  # noqa: E402

app.add_typer(data_app, name="data")

# run <experiment>, run all, report, compare (transfusion.experiments.cli)
from transfusion.experiments.cli import register as _register_experiments  # noqa: E402

_register_experiments(app, run_app)


def main() -> None:
    """Console entry point: an error the user can act on is one line on stderr (exit 2), not a
    traceback; set TRANSFUSION_DEBUG=1 for the traceback."""
    import os
    import sys

    from transfusion.errors import USER_ERROR_EXIT, TransfusionError

    try:
        app()
    except TransfusionError as exc:
        if os.environ.get("TRANSFUSION_DEBUG") == "1":
            raise
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        sys.exit(USER_ERROR_EXIT)


if __name__ == "__main__":  # pragma: no cover
    main()
