//! Patch sampling: where a training patch is cut.
//!
//! Uniform: the patch origin is uniform over all positions that keep the
//! patch inside the volume. Class-balanced: with probability `fg_prob`, a
//! foreground class present in the label map is drawn uniformly, then one of
//! its voxels uniformly, and the patch is centred on that voxel (then shifted
//! to stay inside the volume). A volume smaller than the patch along an axis
//! gets a centred, padded window there (negative origin).

use super::rng::Rng;
use super::volume::Volume;

/// The voxels of each foreground class (built once per case).
#[derive(Clone, Debug, Default)]
pub struct ClassIndex {
    /// (class id, linear voxel indices), class ids increasing.
    pub classes: Vec<(u32, Vec<u32>)>,
}

impl ClassIndex {
    pub fn new(label: &Volume) -> ClassIndex {
        let mut by: std::collections::BTreeMap<u32, Vec<u32>> = Default::default();
        for (i, &v) in label.data.iter().enumerate() {
            if v > 0.0 {
                by.entry(v as u32).or_default().push(i as u32);
            }
        }
        ClassIndex {
            classes: by.into_iter().collect(),
        }
    }
}

/// How patches are placed.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PatchSampler {
    /// Patch extents `[D, H, W]`.
    pub size: [usize; 3],
    /// Probability of centring on a random present foreground class.
    pub fg_prob: f64,
}

impl PatchSampler {
    /// The patch origin (D, H, W; negative along axes shorter than the patch).
    pub fn origin(
        &self,
        dims: [usize; 3],
        classes: Option<&ClassIndex>,
        rng: &mut Rng,
    ) -> [i64; 3] {
        let mut o = [0i64; 3];
        let centre = match classes {
            Some(ci) if !ci.classes.is_empty() && rng.bernoulli(self.fg_prob) => {
                let (_, vox) = &ci.classes[rng.below(ci.classes.len())];
                let i = vox[rng.below(vox.len())] as usize;
                let [_, h, w] = dims;
                Some([i / (h * w), (i / w) % h, i % w])
            }
            _ => None,
        };
        for a in 0..3 {
            let (n, p) = (dims[a] as i64, self.size[a] as i64);
            o[a] = if n <= p {
                (n - p).div_euclid(2)
            } else {
                match centre {
                    Some(c) => (c[a] as i64 - p / 2).clamp(0, n - p),
                    None => rng.below((n - p + 1) as usize) as i64,
                }
            };
        }
        o
    }
}
