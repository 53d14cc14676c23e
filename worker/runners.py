"""The runners a worker offers, made from the settings: the same for `pe serve`'s in-process worker and
for `pe worker` processes."""

from __future__ import annotations

from pe.settings import Settings
from worker.runner import ImageLocator, Runner


def make_runners(settings: Settings, images: ImageLocator) -> dict[str, Runner]:
    """One runner per kind in `settings.runners` (PE_RUNNERS), finding images through `images`."""
    runners: dict[str, Runner] = {}
    for kind in settings.runners:
        if kind == "sandbox":
            from worker.sandbox import SandboxRunner

            runners[kind] = SandboxRunner(images, settings.slots)
        elif kind == "vm":
            from worker.vm import VmRunner

            runners[kind] = VmRunner(
                images,
                settings.slots,
                cache_dir=settings.cache_dir,
                accel=settings.vm_accel,
                pool_mib=settings.vm_pool_mib,
            )
        else:
            raise ValueError(f"the {kind!r} runner is not available in this version")
    return runners
