"""Bundles for the runtime backends: exported once into ``--bundle-dir`` and reused, or given with ``--bundle``."""
from __future__ import annotations

from pathlib import Path

from .backends import BACKENDS, short

def prepare_bundle(model, label: str, sha: str, backend_name: str, args) -> tuple[str | None, str | None]:
    """(bundle path, None) for a runtime backend, exporting into ``--bundle-dir`` or reusing; or (None, why not)."""
    from meltok_runtime.errors import MeltokError
    from meltok_runtime.manifest import load_manifest

    backend = BACKENDS[backend_name]
    if backend_name in args.bundle_map:
        path = Path(args.bundle_map[backend_name])
        try:
            manifest = load_manifest(path)
        except MeltokError as error:
            return None, f"bundle {path}: {short(error)}"
        if manifest.model_sha256 != sha:
            return None, f"bundle {path} holds another model ({manifest.model_id}), not {label}"
        return str(path), None
    try:
        from meltok_export.bundle import export_bundle
        from meltok_export.contract import PRECISIONS
    except Exception as error:  # noqa: BLE001 - the exporter (torch, onnx, onnxsim) may be missing
        return None, f"cannot export a bundle: meltok_export does not import ({type(error).__name__}: {error})"
    if backend["precision"] not in PRECISIONS:
        return None, (f"meltok_export has no {backend['precision']} precision (it offers "
                      f"{', '.join(PRECISIONS)}); pass --bundle {backend_name}=PATH to time one")
    max_batch = max(args.batch_list)
    if backend["engine"] == "trt" and args.mode == "api":
        max_seconds = opt_seconds = None  # the exporter's default: one runtime window (the codec's window)
    else:
        max_seconds = max(max(args.seconds_list), args.window_seconds or 12.0)
        opt_seconds = min(12.0, max_seconds)
    key = f"{model.config.name}-{sha[:12]}-{backend['engine']}-{backend['precision']}-b{max_batch}-s{max_seconds or 'window'}"
    path = Path(args.bundle_dir) / key
    if (path / "manifest.json").is_file():
        try:
            if load_manifest(path).model_sha256 == sha:
                return str(path), None
        except MeltokError:
            pass
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = {} if args.verify_seconds is None else {"verify_seconds": args.verify_seconds}
    print(f"exporting {label} -> {path} ({backend['engine']}, {backend['precision']})", flush=True)
    try:
        export_bundle(model, path, engine=backend["engine"], precision=backend["precision"], max_seconds=max_seconds,
                      opt_seconds=opt_seconds, max_batch=max_batch, **extra)
    except Exception as error:  # noqa: BLE001 - listed as not available, with the reason
        return None, f"export failed: {type(error).__name__}: {short(error, 300)}"
    return str(path), None


def model_sources(args) -> list[dict]:
    sources = [{"preset": p.strip(), "seed": args.seed} for p in args.presets.split(",") if p.strip()]
    sources += [{"file": str(Path(m).resolve())} for m in args.model]
    return sources
