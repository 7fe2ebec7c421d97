//! Reorientation to the canonical RAS frame and back.
//!
//! Canonical means voxel axis i points (most closely) to world +x (Right),
//! j to +y (Anterior), k to +z (Superior). Reorienting permutes and flips the
//! voxel axes only — no interpolation — and updates the affine so every voxel
//! keeps its world position; [`Reorientation::undo`] restores the original
//! array and affine exactly.

use super::affine::Affine;
use super::volume::Volume;
use anyhow::{ensure, Result};

/// The axis permutation and flips that took a volume to RAS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reorientation {
    /// For new voxel axis b (i, j, k): the old voxel axis it came from.
    pub src_axis: [usize; 3],
    /// For new voxel axis b: whether it runs against the old axis.
    pub flip: [bool; 3],
    /// Old extents along i, j, k.
    pub old_ext: [usize; 3],
}

impl Reorientation {
    /// Map a volume in the canonical frame back to the original grid.
    pub fn undo(&self, canon: &Volume, original_affine: &Affine) -> Result<Volume> {
        let new_ext = [canon.dims[2], canon.dims[1], canon.dims[0]];
        for b in 0..3 {
            ensure!(
                new_ext[b] == self.old_ext[self.src_axis[b]],
                "undo reorientation: extents {:?} do not match the recorded grid {:?}",
                new_ext,
                self.old_ext
            );
        }
        let [oi, oj, ok] = self.old_ext;
        let mut data = vec![0f32; canon.numel()];
        for k in 0..ok {
            for j in 0..oj {
                for i in 0..oi {
                    let old = [i, j, k];
                    let n = self.new_index(old);
                    data[(k * oj + j) * oi + i] =
                        canon.data[(n[2] * new_ext[1] + n[1]) * new_ext[0] + n[0]];
                }
            }
        }
        let mut sp = [0.0; 3]; // along old i, j, k
        for b in 0..3 {
            sp[self.src_axis[b]] = [canon.spacing[2], canon.spacing[1], canon.spacing[0]][b];
        }
        Ok(Volume {
            data,
            dims: [ok, oj, oi],
            spacing: [sp[2], sp[1], sp[0]],
            affine: *original_affine,
            source: canon.source.clone(),
        })
    }

    /// New (canonical) voxel index of an old voxel index.
    fn new_index(&self, old: [usize; 3]) -> [usize; 3] {
        let mut n = [0; 3];
        for b in 0..3 {
            let a = self.src_axis[b];
            n[b] = if self.flip[b] {
                self.old_ext[a] - 1 - old[a]
            } else {
                old[a]
            };
        }
        n
    }
}

/// Permute/flip voxel axes so the volume is RAS. Returns the new volume and
/// the record needed to undo it.
pub fn to_canonical(vol: &Volume) -> (Volume, Reorientation) {
    let orient = vol.affine.orientation(); // per old voxel axis: (world axis, sign)
    let old_ext = [vol.dims[2], vol.dims[1], vol.dims[0]];
    let mut src_axis = [0; 3];
    let mut flip = [false; 3];
    for (a, &(world, sign)) in orient.iter().enumerate() {
        src_axis[world] = a;
        flip[world] = sign < 0;
    }
    let r = Reorientation {
        src_axis,
        flip,
        old_ext,
    };
    let new_ext = [
        old_ext[src_axis[0]],
        old_ext[src_axis[1]],
        old_ext[src_axis[2]],
    ];
    let mut data = vec![0f32; vol.numel()];
    let [oi, oj, ok] = old_ext;
    for k in 0..ok {
        for j in 0..oj {
            for i in 0..oi {
                let n = r.new_index([i, j, k]);
                data[(n[2] * new_ext[1] + n[1]) * new_ext[0] + n[0]] =
                    vol.data[(k * oj + j) * oi + i];
            }
        }
    }
    // T maps a new voxel index to the old one: old[a] = flip ? ext-1-new[b] : new[b].
    let mut t = [[0.0f64; 4]; 4];
    t[3][3] = 1.0;
    for b in 0..3 {
        let a = src_axis[b];
        if flip[b] {
            t[a][b] = -1.0;
            t[a][3] = (old_ext[a] - 1) as f64;
        } else {
            t[a][b] = 1.0;
        }
    }
    let affine = vol.affine.mul(&Affine(t));
    let sp_old = [vol.spacing[2], vol.spacing[1], vol.spacing[0]];
    let sp_new = [
        sp_old[src_axis[0]],
        sp_old[src_axis[1]],
        sp_old[src_axis[2]],
    ];
    (
        Volume {
            data,
            dims: [new_ext[2], new_ext[1], new_ext[0]],
            spacing: [sp_new[2], sp_new[1], sp_new[0]],
            affine,
            source: vol.source.clone(),
        },
        r,
    )
}
