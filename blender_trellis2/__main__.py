"""`python -m blender_trellis2 ...` with the `bpy` module: see blender_trellis2/cli.py."""

from blender_trellis2.cli import main

raise SystemExit(main())
