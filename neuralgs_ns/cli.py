"""The `neuralgs` command (tyro subcommands).

Only `demo` exists so far, and it is a placeholder: the compression stages, the .ngs codec
and the full demo land with their own issues. User errors (`NeuralGSError`) print as one
line on stderr with exit status 1, never a traceback.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import tyro

from neuralgs_ns.errors import NeuralGSError


@dataclass
class Demo:
    """Placeholder until the NeuralGS demo lands: renders a procedural Gaussian scene on
    this machine's CPU (or GPU) with the project's rasteriser and writes a contact sheet PNG."""

    output_dir: Path = Path("neuralgs-demo")
    """Folder for demo.png; created if missing."""
    views: int = 8
    """Number of views around the scene."""
    resolution: int = 128
    """Image width and height in pixels."""

    def main(self) -> None:
        import numpy as np
        import torch
        from PIL import Image

        from neuralgs_ns.render import rasterize
        from neuralgs_ns.utils import atomic_write_bytes, look_at_viewmats

        print("neuralgs demo: placeholder - the compression pipeline is not implemented yet;")
        print("rendering a procedural scene with the CPU/CUDA rasteriser instead.")
        device = "cuda" if torch.cuda.is_available() else "cpu"
        g = torch.Generator().manual_seed(0)
        # A torus knot of small coloured Gaussians.
        n = 20000
        t = torch.rand(n, generator=g) * 2 * math.pi
        p, q = 2, 3
        r = 0.6 + 0.25 * torch.cos(q * t)
        knot = torch.stack([r * torch.cos(p * t), r * torch.sin(p * t), 0.25 * torch.sin(q * t)], -1)
        means = knot + 0.04 * torch.randn(n, 3, generator=g)
        quats = torch.randn(n, 4, generator=g)
        scales = torch.full((n, 3), 0.012) * torch.rand(n, 3, generator=g).add(0.5)
        opacities = torch.full((n,), 0.8)
        colors = torch.stack([0.5 + 0.5 * torch.cos(t), 0.5 + 0.5 * torch.sin(2 * t), 0.5 + 0.5 * torch.cos(3 * t)], -1)
        size = self.resolution
        viewmats = look_at_viewmats(self.views, radius=3.0, elevation_deg=25.0)
        f = 0.5 * size / math.tan(math.radians(25))
        Ks = torch.tensor([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1.0]]).expand(self.views, 3, 3)
        tensors = [x.to(device) for x in (means, quats, scales, opacities, colors, viewmats, Ks)]
        rasterize(*tensors, size, size)  # warm-up: JIT compilation on CPU
        t0 = time.perf_counter()
        renders, _, info = rasterize(*tensors, size, size, backgrounds=torch.ones(self.views, 3, device=device))
        ms = (time.perf_counter() - t0) * 1e3
        sheet = renders.clamp(0, 1).mul(255).byte().cpu().numpy()
        sheet = np.concatenate(list(sheet), axis=1)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        out = self.output_dir / "demo.png"
        import io

        buf = io.BytesIO()
        Image.fromarray(sheet).save(buf, format="PNG")
        atomic_write_bytes(out, buf.getvalue())
        print(f"rendered {n} Gaussians x {self.views} views at {size}x{size} on {device} in {ms:.0f} ms")
        print(f"wrote {out}")


def main(argv=None) -> int:
    commands = {"demo": Demo}
    try:
        cmd = tyro.extras.subcommand_cli_from_dict(commands, args=argv, prog="neuralgs")
        cmd.main()
    except NeuralGSError as err:
        print(f"neuralgs: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
