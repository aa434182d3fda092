"""The throw-away virtual environment that the diffusers fixture scripts run in.

`ensure_venv(script, argv)` re-executes `script` with the venv's Python unless it already runs there. The venv
(default /tmp/venv-diffusers, override with DDPM_DIFFUSERS_VENV) is created when missing, and
`diffusers==0.42.1 safetensors numpy` are installed into it with pip when it lacks them. torch is taken from the
project's `.venv` (a .pth file points at its site-packages) when that exists, otherwise `torch==2.11.0` is
installed from PyPI.
"""

import os
import subprocess
import sys
from pathlib import Path

DIFFUSERS_VERSION = "0.42.1"
TORCH_VERSION = "2.11.0"
REPO = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("DDPM_DIFFUSERS_VENV", "/tmp/venv-diffusers"))


def ensure_venv(script: str, argv: list) -> None:
    """Re-executes `script` with arguments `argv` in the throw-away venv's Python, creating the venv when needed.

    Returns only when the current interpreter already is the venv's.
    """
    venv_python = VENV / "bin" / "python"
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    if not venv_python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    probe = subprocess.run([str(venv_python), "-c", "import diffusers, safetensors, torch"], capture_output=True)
    if probe.returncode != 0:
        project_site = REPO / ".venv" / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
        site = subprocess.run(
            [str(venv_python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
        packages = [f"diffusers=={DIFFUSERS_VERSION}", "safetensors", "numpy"]
        if (project_site / "torch").is_dir():
            Path(site, "ddpm-project-torch.pth").write_text(f"{project_site}\n")
        else:
            packages.append(f"torch=={TORCH_VERSION}")
        subprocess.run([str(venv_python), "-m", "pip", "install", "-q", *packages], check=True)
    os.execv(str(venv_python), [str(venv_python), str(script), *argv])
