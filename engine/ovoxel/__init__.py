"""The O-Voxel representation: mesh <-> O-Voxel, PBR attribute volumes, attribute lookup, and files
(.npz, or the official .vxz container), spec section 5.

numpy/torch only. `flexible_dual_grid_to_mesh` (torch, any device) is also what the shape decoder uses.
"""

from engine.ovoxel.asset import MeshData, OVoxel, from_mesh, load, save, to_mesh
from engine.ovoxel.attributes import Material, TexturedMesh
from engine.ovoxel.extract import flexible_dual_grid_to_mesh
from engine.ovoxel.sample import AttributeVolume, sample_attributes
from engine.ovoxel.vxz import read_vxz, write_vxz

__all__ = [
    "AttributeVolume",
    "Material",
    "MeshData",
    "OVoxel",
    "TexturedMesh",
    "flexible_dual_grid_to_mesh",
    "from_mesh",
    "load",
    "read_vxz",
    "sample_attributes",
    "save",
    "to_mesh",
    "write_vxz",
]
