"""Asset finishing without CUDA: clean-up, face budget, UVs, PBR bake from the attribute volume, GLB."""

from engine.finish.asset import FinishedAsset, finish
from engine.finish.bake import MaterialVolume
from engine.finish.gltf import write_glb

__all__ = ["MaterialVolume", "FinishedAsset", "finish", "write_glb"]
