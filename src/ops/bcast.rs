//! Broadcast shapes, shared by the pointwise family (`binary(op, x, y)`: y is
//! broadcast over x) and the reduce family (`reduce_sum(x, to)` sums x down
//! to such a shape; `expand` is its adjoint).
//!
//! For an x of shape `[d0, …, dk, C]` (C its last dim), the shapes a y may
//! have and what one element of y covers:
//!
//! | [`Bcast`]       | y's shape               | y covers                         |
//! | --------------- | ----------------------- | -------------------------------- |
//! | `Full`          | x's shape               | one element                      |
//! | `Row`           | x's shape, last dim 1   | one row (a voxel's channels)     |
//! | `SampleChannel` | `[d0, C]` (x rank ≥ 3)  | one channel of one sample        |
//! | `Channel`       | `[C]`                   | one channel of every sample      |
//! | `Scalar`        | `[1]`                   | everything                       |
//!
//! Every case is x seen as `[outer, mid, inner]` (see [`Bcast::split`]) with
//! y `[outer, inner]`: element `i` of x meets y element
//! `(i / (mid·inner))·inner + i mod inner`.

use crate::tensor::Shape;
use anyhow::{bail, ensure, Result};

/// How a y is broadcast over x (the table in the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bcast {
    Full,
    Row,
    SampleChannel,
    Channel,
    Scalar,
}

impl Bcast {
    pub const ALL: [Bcast; 5] = [
        Bcast::Full,
        Bcast::Row,
        Bcast::SampleChannel,
        Bcast::Channel,
        Bcast::Scalar,
    ];

    /// The shape of a y broadcast this way over an x of shape `x` (the output
    /// shape of `reduce_sum(x, self)`). SampleChannel needs rank ≥ 3.
    pub fn shape(self, x: Shape) -> Result<Shape> {
        let d = x.dims();
        let c = x.c();
        Ok(match self {
            Bcast::Full => x,
            Bcast::Row => x.with_c(1),
            Bcast::SampleChannel => {
                ensure!(
                    d.len() >= 3,
                    "a per-(sample, channel) broadcast needs x of rank ≥ 3 ([N, …, C]), got {x}"
                );
                Shape::new(&[d[0], c])
            }
            Bcast::Channel => Shape::new(&[c]),
            Bcast::Scalar => Shape::scalar(),
        })
    }

    /// x seen as `[outer, mid, inner]` with y `[outer, inner]`:
    /// Full (numel, 1, 1), Row (rows, C, 1), SampleChannel (N, numel/(N·C), C),
    /// Channel (1, numel/C, C), Scalar (1, numel, 1). Computed from the dims,
    /// so empty shapes split without dividing by zero.
    pub fn split(self, x: Shape) -> (usize, usize, usize) {
        let d = x.dims();
        let (c, rows) = (x.c(), d[..d.len() - 1].iter().product::<usize>());
        match self {
            Bcast::Full => (x.numel(), 1, 1),
            Bcast::Row => (rows, c, 1),
            Bcast::SampleChannel => (d[0], d[1..d.len() - 1].iter().product(), c),
            Bcast::Channel => (1, rows, c),
            Bcast::Scalar => (1, x.numel(), 1),
        }
    }
}

/// The broadcast that takes a y of shape `y` over an x of shape `x`: the
/// first of Full, Scalar, Row, SampleChannel, Channel whose shape `y` is.
/// Shapes that match two cases (x = `[5]`, y = `[1]`: Scalar and Row) mean
/// the same broadcast either way; a y of x's own shape is always Full (so a
/// binary op wants it in x's dtype).
pub fn bcast_of(x: Shape, y: Shape) -> Result<Bcast> {
    for b in [
        Bcast::Full,
        Bcast::Scalar,
        Bcast::Row,
        Bcast::SampleChannel,
        Bcast::Channel,
    ] {
        if b.shape(x).is_ok_and(|s| s == y) {
            return Ok(b);
        }
    }
    let d = x.dims();
    let sample_channel = if d.len() >= 3 {
        format!("[{}, {}], ", d[0], x.c())
    } else {
        String::new()
    };
    bail!(
        "shape {y} does not broadcast over {x} (expected {x}, {}, {sample_channel}[{}] or [1])",
        x.with_c(1),
        x.c()
    )
}
