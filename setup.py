# Shim for setuptools; the metadata lives in pyproject.toml.  It installs sgl_patch_autoload.pth
# into site-packages beside the package, for regular and editable installs alike: at interpreter
# start-up it imports sgl_patch.autoload only when an SGL_* variable is set (sgl_patch/autoload.py).
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH = Path(__file__).with_name("sgl_patch_autoload.pth")


class build_py_with_pth(build_py):
    """Regular installs: build_lib is the image of site-packages."""

    def run(self):
        super().run()
        self.copy_file(str(PTH), str(Path(self.build_lib, PTH.name)), preserve_mode=0)

    def get_outputs(self, *args, **kwargs):
        return [*super().get_outputs(*args, **kwargs), str(Path(self.build_lib, PTH.name))]


class editable_wheel_with_pth(editable_wheel):
    """Editable installs (pip install -e): their wheel is written from the unpacked folder."""

    def _run_build_commands(self, dist_name, unpacked_wheel, build_lib, tmp_dir):
        result = super()._run_build_commands(dist_name, unpacked_wheel, build_lib, tmp_dir)
        shutil.copyfile(PTH, Path(unpacked_wheel, PTH.name))
        return result


setup(cmdclass={"build_py": build_py_with_pth, "editable_wheel": editable_wheel_with_pth})
