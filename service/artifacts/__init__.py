"""The artifact contract: what a published directory holds (``manifest.json``, hashes), how it is
published (build, fsync, rename, swing a symlink), which versions are kept (the newest K, the
current one, and every version a running server leases or a person pinned), and their clean-up.

``twinserve prune`` builds the files; this package owns the rest. The server calls
:func:`verify_artifacts` and :func:`hold` when it loads a version.
"""

from service.artifacts.manifest import (
    MANIFEST_FILE,
    ArtifactIntegrityError,
    Manifest,
    file_sha256,
    hash_directory,
    load_manifest,
    verify_artifacts,
    write_manifest,
)
from service.artifacts.publishing import (
    DEFAULT_KEEP_VERSIONS,
    PublishError,
    building,
    publish,
    publish_lock,
    remove_orphans,
    sync_tree,
)
from service.artifacts.versions import (
    Version,
    collect,
    hold,
    lease_root,
    list_versions,
    pin,
    prepare_leases,
    release,
    resolve_version,
    unpin,
)

__all__ = [
    "DEFAULT_KEEP_VERSIONS", "MANIFEST_FILE", "ArtifactIntegrityError", "Manifest", "PublishError", "Version",
    "building", "collect", "file_sha256", "hash_directory", "hold", "lease_root", "list_versions", "load_manifest",
    "pin", "prepare_leases", "publish", "publish_lock", "release", "remove_orphans", "resolve_version", "sync_tree",
    "unpin", "verify_artifacts", "write_manifest",
]
