//! The emulator's mma.sync.m16n8k16 (bf16 → f32) and ldmatrix fragment
//! mappings against an oracle that shares none of its code: the thread-value
//! layouts CUTLASS's CuTe defines for these instructions, transcribed below as
//! CuTe layout strings (`shape:stride`) and evaluated by the small layout
//! function in this file. tests/emu_warp.rs checks the same wrappers against a
//! reading of the PTX ISA written next to the emulator; this file checks them
//! against a second, independent source (CuTe's layouts are what CUTLASS's
//! tensor-core kernels run on real GPUs).
//!
//! Transcribed from NVIDIA/cutlass:
//! - `include/cute/atom/mma_traits_sm80.hpp` at commit
//!   468e0eaf9dac60cd920d567c2273261237516b28: `MMA_Traits<SM80_16x8x16_F32BF16BF16F32_TN>`
//!   inherits `ALayout`, `BLayout`, `CLayout` of `SM80_16x8x16_F16F16F16F16_TN`
//!   (`CLayout = SM80_16x8_Row`). A layout maps (thread, value) to the
//!   column-major index of the value in A (M×K = 16×16), B (N×K = 8×16: the
//!   TN atom's B is K-major) or C/D (M×N = 16×8). The atom's register arrays
//!   (`include/cute/arch/mma_sm80.hpp`: A `uint32_t[4]`, B `uint32_t[2]`, C/D
//!   `float[4]`) are the thread's value fragment recast, so bf16 value v sits
//!   in register v / 2, bits 16·(v % 2) (value 0 in the low half).
//! - `include/cute/atom/copy_traits_sm75.hpp` at commit
//!   474c1fd42eaaa652df47ecf3040f2e4118471e11: `Copy_Traits<SM75_U32x{1,2,4}_LDSM_N>`
//!   (ldmatrix .x1/.x2/.x4) and `Copy_Traits<SM75_U16x{2,4,8}_LDSM_T>` (the same
//!   with .trans). `SrcLayout` maps (source thread, bit of its 128-bit row) and
//!   `DstLayout` (destination thread, bit of its registers, register r's bits
//!   at 32·r..) to one bit index; a bit a thread receives is the bit with the
//!   same index of the row some source thread addressed. Source threads that a
//!   stride-0 mode makes duplicates supply no address of their own: the first of
//!   them (lanes 0–7 for .x1, 0–15 for .x2) does.

mod gpu_support;

use gpu_support::*;
use voxdiff::backend::gpu::device::{KernelArgs, LaunchConfig};
use voxdiff::backend::gpu::registry::Kernel;

// ------------------------------------------------------------------ layouts

/// A CuTe shape or stride: an integer or a tuple of them.
#[derive(Clone, Debug)]
enum Tree {
    Int(i64),
    Tuple(Vec<Tree>),
}

impl Tree {
    fn size(&self) -> i64 {
        match self {
            Tree::Int(n) => *n,
            Tree::Tuple(v) => v.iter().map(Tree::size).product(),
        }
    }
}

/// A CuTe layout: a function from a coordinate to an index,
/// `Σ coordinate_i · stride_i` over the shape's leaves.
#[derive(Clone, Debug)]
struct Layout {
    shape: Tree,
    stride: Tree,
}

fn parse_tree(s: &[u8], pos: &mut usize) -> Tree {
    if s[*pos] == b'(' {
        *pos += 1;
        let mut items = vec![parse_tree(s, pos)];
        while s[*pos] == b',' {
            *pos += 1;
            items.push(parse_tree(s, pos));
        }
        assert_eq!(s[*pos], b')', "unbalanced tuple");
        *pos += 1;
        Tree::Tuple(items)
    } else {
        let start = *pos;
        while *pos < s.len() && s[*pos].is_ascii_digit() {
            *pos += 1;
        }
        Tree::Int(
            std::str::from_utf8(&s[start..*pos])
                .unwrap()
                .parse()
                .unwrap(),
        )
    }
}

impl Layout {
    /// Parses CuTe's printed form, e.g. `((4,8),(2,2)):((32,1),(16,8))`.
    fn parse(text: &str) -> Layout {
        let t: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
        let mut pos = 0;
        let shape = parse_tree(&t, &mut pos);
        assert_eq!(t[pos], b':', "{text}: shape:stride");
        pos += 1;
        let stride = parse_tree(&t, &mut pos);
        assert_eq!(pos, t.len(), "{text}: trailing text");
        let layout = Layout { shape, stride };
        layout.check_congruent(&layout.shape, &layout.stride);
        layout
    }

    fn check_congruent(&self, shape: &Tree, stride: &Tree) {
        match (shape, stride) {
            (Tree::Int(_), Tree::Int(_)) => {}
            (Tree::Tuple(a), Tree::Tuple(b)) if a.len() == b.len() => {
                for (x, y) in a.iter().zip(b) {
                    self.check_congruent(x, y);
                }
            }
            _ => panic!("shape and stride are not congruent: {self:?}"),
        }
    }

    /// The index of the 1-D coordinate `i` of a mode: `i` splits over the
    /// mode's leaves colexicographically (the first leaf fastest).
    fn eval_mode(shape: &Tree, stride: &Tree, i: i64) -> i64 {
        match (shape, stride) {
            (Tree::Int(n), Tree::Int(d)) => {
                assert!(i < *n, "coordinate {i} outside a mode of size {n}");
                i * d
            }
            (Tree::Tuple(s), Tree::Tuple(d)) => {
                let mut rest = i;
                let mut sum = 0;
                for (sk, dk) in s.iter().zip(d) {
                    let n = sk.size();
                    sum += Self::eval_mode(sk, dk, rest % n);
                    rest /= n;
                }
                assert_eq!(rest, 0, "coordinate {i} outside the mode");
                sum
            }
            _ => unreachable!(),
        }
    }

    /// A thread-value layout `(T, V) → index` at (thread, value).
    fn tv(&self, thread: i64, value: i64) -> i64 {
        let (Tree::Tuple(s), Tree::Tuple(d)) = (&self.shape, &self.stride) else {
            panic!("a thread-value layout has two modes: {self:?}");
        };
        assert_eq!(s.len(), 2, "a thread-value layout has two modes");
        Self::eval_mode(&s[0], &d[0], thread) + Self::eval_mode(&s[1], &d[1], value)
    }

    fn threads(&self) -> i64 {
        match &self.shape {
            Tree::Tuple(s) => s[0].size(),
            Tree::Int(_) => unreachable!(),
        }
    }

    fn values(&self) -> i64 {
        match &self.shape {
            Tree::Tuple(s) => s[1].size(),
            Tree::Int(_) => unreachable!(),
        }
    }
}

#[test]
fn the_layout_evaluator_follows_cute() {
    // Examples worked by hand from CuTe's definition (colexicographic
    // coordinates, index = inner product with the strides).
    let l = Layout::parse("((4,8),(2,2)):((32,1),(16,8))");
    assert_eq!((l.threads(), l.values()), (32, 4));
    assert_eq!(l.tv(0, 0), 0);
    assert_eq!(l.tv(1, 0), 32); // thread (1, 0)
    assert_eq!(l.tv(4, 0), 1); // thread (0, 1)
    assert_eq!(l.tv(5, 3), 32 + 1 + 16 + 8);
    assert_eq!(l.tv(31, 2), 3 * 32 + 7 + 8);
    let s = Layout::parse("((8,4),128):((128,0),1)");
    assert_eq!(s.tv(9, 5), 128 + 5); // thread (1, 1): the stride-0 mode repeats thread 1
    assert_eq!(s.values(), 128);
}

// ---------------------------------------------------------------- mma.sync

/// SM80_16x8x16_F32BF16BF16F32_TN (via SM80_16x8x16_F16F16F16F16_TN).
const MMA_A: &str = "((4,8),(2,2,2)):((32,1),(16,8,128))"; // (T32,V8) → (M16,K16)
const MMA_B: &str = "((4,8),(2,2)):((16,1),(8,64))"; // (T32,V4) → (N8,K16)
const MMA_C: &str = "((4,8),(2,2)):((32,1),(16,8))"; // SM80_16x8_Row: (T32,V4) → (M16,N8)

fn bf16(v: f32) -> u16 {
    let b = half::bf16::from_f32(v);
    assert_eq!(b.to_f32(), v, "{v} is not exact in bf16");
    b.to_bits()
}

/// Runs the bare mma wrapper with A (16×16, a[m][k]), B (16×8, b[k][n]) and
/// C (16×8) distributed over the lanes' registers as CuTe's layouts say, and
/// returns D gathered back through CuTe's C layout as d[m][n], checking that
/// every (lane, value) of D is written exactly once.
fn mma_through_cute(a: &[[f32; 16]; 16], b: &[[f32; 8]; 16], c: &[[f32; 8]; 16]) -> [[f32; 8]; 16] {
    let (la, lb, lc) = (
        Layout::parse(MMA_A),
        Layout::parse(MMA_B),
        Layout::parse(MMA_C),
    );
    assert_eq!((la.threads(), la.values()), (32, 8));
    assert_eq!((lb.threads(), lb.values()), (32, 4));
    assert_eq!((lc.threads(), lc.values()), (32, 4));
    let mut ra = vec![0u32; 32 * 4];
    let mut rb = vec![0u32; 32 * 2];
    let mut rc = vec![0f32; 32 * 4];
    for t in 0..32i64 {
        for v in 0..8i64 {
            let i = la.tv(t, v); // column-major (M16, K16)
            let (m, k) = ((i % 16) as usize, (i / 16) as usize);
            ra[(4 * t + v / 2) as usize] |= (bf16(a[m][k]) as u32) << (16 * (v % 2));
        }
        for v in 0..4i64 {
            let i = lb.tv(t, v); // column-major (N8, K16)
            let (n, k) = ((i % 8) as usize, (i / 8) as usize);
            rb[(2 * t + v / 2) as usize] |= (bf16(b[k][n]) as u32) << (16 * (v % 2));
            let i = lc.tv(t, v); // column-major (M16, N8)
            let (m, n) = ((i % 16) as usize, (i / 16) as usize);
            rc[(4 * t + v) as usize] = c[m][n];
        }
    }
    let dev = device();
    let (ab, bb, cb) = (upload(&dev, &ra), upload(&dev, &rb), upload(&dev, &rc));
    let db = poisoned::<f32>(&dev, 32 * 4);
    run(
        &dev,
        Kernel::SelftestMmaRegs,
        LaunchConfig::linear(1, 32),
        KernelArgs::new()
            .buffer(&ab)
            .buffer(&bb)
            .buffer(&cb)
            .buffer(&db),
    );
    let rd: Vec<f32> = download(&dev, &db, 32 * 4);
    let mut d = [[f32::NAN; 8]; 16];
    let mut seen = [[false; 8]; 16];
    for t in 0..32i64 {
        for v in 0..4i64 {
            let i = lc.tv(t, v);
            let (m, n) = ((i % 16) as usize, (i / 16) as usize);
            assert!(!seen[m][n], "D[{m}][{n}] appears twice in CuTe's C layout");
            seen[m][n] = true;
            d[m][n] = rd[(4 * t + v) as usize];
        }
    }
    d
}

/// Distinct multiples of 1/8 in [-2, 2]: exact in bf16; products and sums of
/// 16 of them exact in f32, so D must match bit for bit.
fn eighth(i: usize, seed: usize) -> f32 {
    ((((i * 7 + seed * 13) * 2654435761usize) >> 7) % 33) as f32 / 8.0 - 2.0
}

#[test]
fn mma_a_values_land_where_cute_puts_them() {
    // B selects columns k0..k0+8 of A: D[m][n] = A[m][k0 + n].
    let a: [[f32; 16]; 16] = std::array::from_fn(|m| std::array::from_fn(|k| (m * 16 + k) as f32));
    for k0 in [0usize, 8] {
        let b: [[f32; 8]; 16] =
            std::array::from_fn(|k| std::array::from_fn(|n| (k == k0 + n) as u8 as f32));
        let d = mma_through_cute(&a, &b, &[[0.0; 8]; 16]);
        for m in 0..16 {
            for n in 0..8 {
                assert_eq!(
                    d[m][n],
                    a[m][k0 + n],
                    "A[{m}][{}] did not reach D[{m}][{n}]",
                    k0 + n
                );
            }
        }
    }
}

#[test]
fn mma_b_values_land_where_cute_puts_them() {
    // A = the identity: D[m][n] = B[m][n].
    let a: [[f32; 16]; 16] =
        std::array::from_fn(|m| std::array::from_fn(|k| (m == k) as u8 as f32));
    let b: [[f32; 8]; 16] = std::array::from_fn(|k| std::array::from_fn(|n| (k * 8 + n) as f32));
    let d = mma_through_cute(&a, &b, &[[0.0; 8]; 16]);
    for m in 0..16 {
        for n in 0..8 {
            assert_eq!(d[m][n], b[m][n], "B[{m}][{n}] did not reach D[{m}][{n}]");
        }
    }
}

#[test]
fn mma_product_with_accumulator_follows_cute() {
    let a: [[f32; 16]; 16] =
        std::array::from_fn(|m| std::array::from_fn(|k| eighth(m * 16 + k, 1)));
    let b: [[f32; 8]; 16] = std::array::from_fn(|k| std::array::from_fn(|n| eighth(k * 8 + n, 2)));
    let c: [[f32; 8]; 16] =
        std::array::from_fn(|m| std::array::from_fn(|n| eighth(m * 8 + n, 3) * 4.0));
    let d = mma_through_cute(&a, &b, &c);
    for m in 0..16 {
        for n in 0..8 {
            let want = c[m][n] as f64
                + (0..16)
                    .map(|k| a[m][k] as f64 * b[k][n] as f64)
                    .sum::<f64>();
            assert_eq!(d[m][n] as f64, want, "D[{m}][{n}]");
        }
    }
}

// ---------------------------------------------------------------- ldmatrix

/// (name, kernel variant = 2·v + trans, registers, SrcLayout, DstLayout).
const LDSM: [(&str, i32, usize, &str, &str); 6] = [
    (
        "SM75_U32x1_LDSM_N",
        0,
        1,
        "((8,4),128):((128,0),1)",
        "(32,32):(32,1)",
    ),
    (
        "SM75_U16x2_LDSM_T",
        1,
        1,
        "((8,4),128):((128,0),1)",
        "((4,8),(16,2)):((256,16),(1,128))",
    ),
    (
        "SM75_U32x2_LDSM_N",
        2,
        2,
        "((16,2),128):((128,0),1)",
        "(32,(32,2)):(32,(1,1024))",
    ),
    (
        "SM75_U16x4_LDSM_T",
        3,
        2,
        "((16,2),128):((128,0),1)",
        "((4,8),(16,2,2)):((256,16),(1,128,1024))",
    ),
    (
        "SM75_U32x4_LDSM_N",
        4,
        4,
        "(32,128):(128,1)",
        "(32,(32,4)):(32,(1,1024))",
    ),
    (
        "SM75_U16x8_LDSM_T",
        5,
        4,
        "(32,128):(128,1)",
        "((4,8),(16,2,4)):((256,16),(1,128,1024))",
    ),
];

#[test]
fn ldmatrix_bits_land_where_cute_puts_them() {
    let dev = device();
    // 32 rows of 8 distinct b16 values; lanes address the rows in a scrambled
    // order, so a lane that reads the wrong lane's row is seen.
    let rows: Vec<u16> = (0..32 * 8)
        .map(|e| (0x9000 + ((e / 8) << 4) + e % 8) as u16)
        .collect();
    let row_of_lane: Vec<i32> = (0..32).map(|l| (l * 13 + 5) % 32).collect();
    let (rb, lb) = (upload(&dev, &rows), upload(&dev, &row_of_lane));
    for (name, variant, regs, src, dst) in LDSM {
        let (src, dst) = (Layout::parse(src), Layout::parse(dst));
        assert_eq!(
            (src.threads(), src.values(), dst.threads(), dst.values()),
            (32, 128, 32, 32 * regs as i64),
            "{name}"
        );
        // Bit index → (source lane, bit of its row): the first lane wins.
        let mut source = vec![None; 32 * 32 * regs];
        for s in 0..32i64 {
            for sv in 0..128i64 {
                let b = src.tv(s, sv) as usize;
                source[b].get_or_insert((s as usize, sv as usize));
            }
        }
        let ob = poisoned::<u32>(&dev, 32 * 4);
        run(
            &dev,
            Kernel::SelftestLdmatrixRows,
            LaunchConfig::linear(1, 32),
            KernelArgs::new()
                .buffer(&rb)
                .buffer(&lb)
                .buffer(&ob)
                .i32(variant),
        );
        let out: Vec<u32> = download(&dev, &ob, 32 * 4);
        for t in 0..32usize {
            for r in 0..regs {
                let mut want = 0u32;
                for p in 0..32usize {
                    let b = dst.tv(t as i64, (32 * r + p) as i64) as usize;
                    let (s, sv) =
                        source[b].unwrap_or_else(|| panic!("{name}: bit {b} has no source thread"));
                    let row = row_of_lane[s] as usize;
                    let bit = (rows[row * 8 + sv / 16] >> (sv % 16)) & 1;
                    want |= (bit as u32) << p;
                }
                assert_eq!(
                    out[4 * t + r],
                    want,
                    "{name}: lane {t} register {r}: got {:#010x}, CuTe says {want:#010x}",
                    out[4 * t + r]
                );
            }
        }
    }
}
