"""Build hook: copies redis/sse.lua, the one copy in git of the sse_publish
Redis Function, into the package as src/nginx_sse/sse.lua (git-ignored) at
every build (wheel, sdist, editable install), so that the package ships it.

From an unpacked sdist (no repository around it), the copy the sdist carries
is used as it is. tests/test_packaging.py fails when the packaged copy differs
from redis/sse.lua.
"""

import shutil
from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


def repo_lua(root: Path):
    """redis/sse.lua of the repository that holds this project, or None."""
    repo = root.resolve().parent.parent
    ours = repo / "clients" / "python"
    lua = repo / "redis" / "sse.lua"
    if lua.is_file() and ours.is_dir() and ours.samefile(root):
        return lua
    return None


def copy_lua(root: Path) -> Path:
    dest = root / "src" / "nginx_sse" / "sse.lua"
    source = repo_lua(root)
    if source is not None:
        if not dest.is_file() or dest.read_bytes() != source.read_bytes():
            shutil.copyfile(source, dest)
    elif not dest.is_file():
        raise RuntimeError(
            f"{dest} is missing and no redis/sse.lua was found two levels above {root}"
        )
    return dest


class CustomBuildHook(BuildHookInterface):
    def initialize(self, version, build_data):
        copy_lua(Path(self.root))
