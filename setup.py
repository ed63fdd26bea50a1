"""Build script: ships ``espnet_imlspike.pth`` at the root of site-packages.

The .pth line installs the import hook that registers our encoders into ESPnet's
task registries (see espnet_imlspike/autoload.py). setup.cfg holds the metadata.
"""

import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = "espnet_imlspike.pth"


class BuildPyWithPth(build_py):
    """build_py that also copies the .pth file next to the package (wheel root)."""

    def run(self):
        super().run()
        shutil.copyfile(PTH, os.path.join(self.build_lib, PTH))
        if getattr(self, "editable_mode", False):
            # PEP 660 editable wheels are built from the install dir, not build_lib.
            install_lib = self.distribution.get_command_obj("install").install_lib
            if install_lib:
                shutil.copyfile(PTH, os.path.join(install_lib, PTH))

    def get_outputs(self, include_bytecode=True):
        return super().get_outputs(include_bytecode) + [
            os.path.join(self.build_lib, PTH)
        ]

    def get_output_mapping(self):
        mapping = super().get_output_mapping()
        mapping[os.path.join(self.build_lib, PTH)] = PTH
        return mapping


setup(cmdclass={"build_py": BuildPyWithPth})
