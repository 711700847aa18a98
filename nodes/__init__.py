"""ComfyUI nodes of the LGM pack (V3 schema). Thin adapters: ComfyUI types in, ``lgm_core`` calls,
ComfyUI types out. ``comfy_api.py`` is the only module importing
ComfyUI; ``bridge.py`` converts core's SPLAT/MESH, ``files``/``devices``/``progress`` do one job each."""
