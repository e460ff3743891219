"""jaxcloak: Fawkes-style face cloaking in JAX.

Images are float32 NHWC RGB in [0, 1] everywhere inside JAX code.
"""

from pathlib import Path

__version__ = "0.1.0"
SAMPLES_DIR = Path(__file__).parent / "samples"
