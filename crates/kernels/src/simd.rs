//! The instruction sets cae's vector kernels are compiled for, the level a process runs at
//! (`CAE_SIMD`), and the vector operations the kernels are written in.
//!
//! Each kernel is written once, generic over `Isa`, and instantiated per instruction set in
//! a function compiled for it (`#[target_feature]`); the `Isa` methods are
//! `#[inline(always)]` wrappers of single intrinsics, so that after inlining the kernel is
//! exactly the code written with raw intrinsics (checked in the disassembly: see
//! `docs/perf/kernels-codegen.md`). The level is read once per call of a kernel entry, never
//! inside a micro-kernel. The instances: AVX-512 and AVX2+FMA on x86-64, NEON on aarch64.
//!
//! Written here rather than taken from `macerator` or `pulp`: the kernels size their register
//! tiles from the vector width and register count at compile time (`[[V; N]; P]` accumulators
//! chosen per level), which needs both as constants of the type; macerator gives the lane
//! count only as a function and neither crate offers masked loads and stores of the first `n`
//! lanes, which the direct kernels use on map edges.

use std::sync::OnceLock;

/// A level of vector instructions cae's kernels run at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimdLevel {
    /// AVX-512F: 16 lanes, 32 registers (x86-64).
    Avx512,
    /// AVX2 with FMA: 8 lanes, 16 registers (x86-64).
    Avx2Fma,
    /// NEON (Advanced SIMD): 4 lanes, 32 registers (aarch64).
    Neon,
    /// No vector kernels: every pass runs im2col/col2im around `gemm`.
    Portable,
}

/// Every level, in the order [`SimdLevel::supported`] lists them and `CAE_SIMD` names them.
const LEVELS: [SimdLevel; 4] = [
    SimdLevel::Avx512,
    SimdLevel::Avx2Fma,
    SimdLevel::Neon,
    SimdLevel::Portable,
];

impl SimdLevel {
    /// The widest level this CPU offers.
    pub fn of_cpu() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                return Self::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Self::Avx2Fma;
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            if std::arch::is_aarch64_feature_detected!("neon") {
                return Self::Neon;
            }
        }
        Self::Portable
    }

    /// The levels this CPU can run, widest first: on x86-64 the levels up to its own (an
    /// AVX-512 CPU also runs AVX2 code), on aarch64 NEON, and the portable level everywhere.
    pub fn supported() -> Vec<Self> {
        let cpu = Self::of_cpu();
        LEVELS
            .into_iter()
            .filter(|level| *level == cpu || level.runs_on(cpu))
            .collect()
    }

    /// Whether a CPU whose widest level is `cpu` also runs this narrower one.
    fn runs_on(self, cpu: Self) -> bool {
        match self {
            Self::Portable => true,
            Self::Avx2Fma => cpu == Self::Avx512,
            _ => false,
        }
    }

    /// The value `CAE_SIMD` takes for this level.
    pub fn name(self) -> &'static str {
        match self {
            Self::Avx512 => "avx512",
            Self::Avx2Fma => "avx2",
            Self::Neon => "neon",
            Self::Portable => "portable",
        }
    }

    /// Float32 lanes of one vector register (1 for the portable level).
    pub(crate) fn lanes(self) -> usize {
        match self {
            Self::Avx512 => 16,
            Self::Avx2Fma => 8,
            Self::Neon => 4,
            Self::Portable => 1,
        }
    }

    /// Vector registers of the level, which the kernels' tiles are sized for (the scalar
    /// registers' 16 for the portable level).
    pub(crate) fn registers(self) -> usize {
        match self {
            Self::Avx512 | Self::Neon => 32,
            Self::Avx2Fma | Self::Portable => 16,
        }
    }

    /// The level `CAE_SIMD` asks for, or the CPU's when it is unset; an unknown name or a
    /// level this CPU lacks is refused with a message saying what it has.
    pub fn requested() -> Result<Self, String> {
        match std::env::var("CAE_SIMD") {
            Err(std::env::VarError::NotPresent) => Ok(Self::of_cpu()),
            Err(std::env::VarError::NotUnicode(_)) => Err(format!(
                "CAE_SIMD is not valid UTF-8; use {}",
                Self::names()
            )),
            Ok(name) => Self::from_name(&name),
        }
    }

    /// The names `CAE_SIMD` accepts, for messages: "avx512, avx2, neon or portable".
    fn names() -> String {
        let names: Vec<_> = LEVELS.iter().map(|l| l.name()).collect();
        format!(
            "{} or {}",
            names[..names.len() - 1].join(", "),
            names[names.len() - 1]
        )
    }

    fn from_name(name: &str) -> Result<Self, String> {
        let wanted = name.trim().to_ascii_lowercase();
        let Some(level) = LEVELS.into_iter().find(|l| l.name() == wanted) else {
            return Err(format!(
                "CAE_SIMD={name:?} is not a level: use {}",
                Self::names()
            ));
        };
        let supported = Self::supported();
        if !supported.contains(&level) {
            let has: Vec<_> = supported.iter().map(|l| l.name()).collect();
            return Err(format!(
                "CAE_SIMD={} asks for instructions this CPU lacks; it runs {}",
                level.name(),
                has.join(", ")
            ));
        }
        Ok(level)
    }

    /// The level this process runs at: [`Self::requested`], read once (every kernel call asks,
    /// and reading the environment takes a global lock).
    ///
    /// # Panics
    /// When `CAE_SIMD` is refused; the `cae` binary checks [`Self::requested`] first and
    /// reports the message as an error.
    pub fn active() -> Self {
        static ACTIVE: OnceLock<Result<SimdLevel, String>> = OnceLock::new();
        match ACTIVE.get_or_init(Self::requested) {
            Ok(level) => *level,
            Err(message) => panic!("{message}"),
        }
    }
}

/// The vector operations of one instruction set, on float32 vectors of [`Isa::LANES`] lanes.
///
/// # Safety
/// Every method may only be called from a function compiled with the instruction set enabled
/// (see the instantiating modules), into which it is inlined; pointers must be valid for the
/// lanes read or written.
pub(crate) trait Isa: Copy {
    const LANES: usize;
    /// Vector registers the set has: the tiles are sized to fit them.
    const REGISTERS: usize;
    type V: Copy;
    /// Which of the first lanes a masked load or store touches.
    type Mask: Copy;

    unsafe fn zero() -> Self::V;
    unsafe fn splat(value: f32) -> Self::V;
    unsafe fn load(from: *const f32) -> Self::V;
    unsafe fn store(to: *mut f32, value: Self::V);
    /// The mask of the first `count` lanes (`count <= LANES`).
    unsafe fn first(count: usize) -> Self::Mask;
    /// Loads the masked lanes, zero in the others.
    unsafe fn load_masked(from: *const f32, mask: Self::Mask) -> Self::V;
    unsafe fn store_masked(to: *mut f32, mask: Self::Mask, value: Self::V);
    /// `a * b + c`, rounded once.
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    /// [`crate::relu_gate::relu`] of every lane: NaN stays NaN, -0 becomes +0.
    unsafe fn relu(value: Self::V) -> Self::V;
    unsafe fn sum(value: Self::V) -> f32;
    /// Transposes the `LANES x LANES` block at `from` (row stride `from_stride`) into `to`
    /// (row stride `to_stride`).
    unsafe fn transpose_block(from: *const f32, from_stride: usize, to: *mut f32, to_stride: usize);
}

/// Defines, next to generic kernels `fn name<S: Isa, const ..>(args)`, one module per
/// instruction set (`avx512`, `avx2` on x86-64, `neon` on aarch64) holding
/// `unsafe fn name<const ..>(args)` compiled for it, which runs the kernel with that set: the
/// only place `#[target_feature]` is written.
macro_rules! instantiate {
    ($( fn $name:ident<$(const $c:ident: $ct:ty),*>($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)?; )*) => {
        #[cfg(target_arch = "x86_64")]
        pub(crate) mod avx512 {
            #[allow(unused_imports)]
            use super::*;
            $(
                /// # Safety
                /// The CPU has AVX-512F; the kernel's own contract.
                #[target_feature(enable = "avx512f")]
                pub(crate) unsafe fn $name<$(const $c: $ct),*>($($arg: $ty),*) $(-> $ret)? {
                    unsafe { super::$name::<crate::simd::Avx512 $(, $c)*>($($arg),*) }
                }
            )*
        }
        #[cfg(target_arch = "x86_64")]
        pub(crate) mod avx2 {
            #[allow(unused_imports)]
            use super::*;
            $(
                /// # Safety
                /// The CPU has AVX2 and FMA; the kernel's own contract.
                #[target_feature(enable = "avx2,fma")]
                pub(crate) unsafe fn $name<$(const $c: $ct),*>($($arg: $ty),*) $(-> $ret)? {
                    unsafe { super::$name::<crate::simd::Avx2Fma $(, $c)*>($($arg),*) }
                }
            )*
        }
        #[cfg(target_arch = "aarch64")]
        pub(crate) mod neon {
            #[allow(unused_imports)]
            use super::*;
            $(
                /// # Safety
                /// The CPU has NEON; the kernel's own contract.
                #[target_feature(enable = "neon")]
                pub(crate) unsafe fn $name<$(const $c: $ct),*>($($arg: $ty),*) $(-> $ret)? {
                    unsafe { super::$name::<crate::simd::Neon $(, $c)*>($($arg),*) }
                }
            )*
        }
    };
}
pub(crate) use instantiate;

/// Runs the kernel `f(args)` that [`instantiate`] compiled beside the caller for `level`, or
/// evaluates `otherwise` at the portable level. The kernels with per-level tile shapes (const
/// generics) choose their instance themselves.
///
/// The caller states why the call is sound: `level` must be one this CPU runs (as
/// [`SimdLevel::active`] is), and the arguments must meet the kernel's contract.
macro_rules! at_level {
    ($level:expr, $f:ident($($arg:expr),* $(,)?), $otherwise:expr) => {
        match $level {
            #[cfg(target_arch = "x86_64")]
            $crate::simd::SimdLevel::Avx512 => unsafe { avx512::$f($($arg),*) },
            #[cfg(target_arch = "x86_64")]
            $crate::simd::SimdLevel::Avx2Fma => unsafe { avx2::$f($($arg),*) },
            #[cfg(target_arch = "aarch64")]
            $crate::simd::SimdLevel::Neon => unsafe { neon::$f($($arg),*) },
            _ => $otherwise,
        }
    };
}
pub(crate) use at_level;

/// One lane, no instruction set: for the helpers the portable path shares (padding), so that
/// they are written once too.
#[derive(Clone, Copy)]
pub(crate) struct Scalar;

// SAFETY (all methods): plain float operations; pointers as the trait requires.
impl Isa for Scalar {
    const LANES: usize = 1;
    const REGISTERS: usize = 16;
    type V = f32;
    type Mask = bool;

    #[inline(always)]
    unsafe fn zero() -> f32 {
        0.0
    }
    #[inline(always)]
    unsafe fn splat(value: f32) -> f32 {
        value
    }
    #[inline(always)]
    unsafe fn load(from: *const f32) -> f32 {
        unsafe { from.read_unaligned() }
    }
    #[inline(always)]
    unsafe fn store(to: *mut f32, value: f32) {
        unsafe { to.write_unaligned(value) }
    }
    #[inline(always)]
    unsafe fn first(count: usize) -> bool {
        count > 0
    }
    #[inline(always)]
    unsafe fn load_masked(from: *const f32, mask: bool) -> f32 {
        if mask {
            unsafe { from.read_unaligned() }
        } else {
            0.0
        }
    }
    #[inline(always)]
    unsafe fn store_masked(to: *mut f32, mask: bool, value: f32) {
        if mask {
            unsafe { to.write_unaligned(value) }
        }
    }
    #[inline(always)]
    unsafe fn fma(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
    #[inline(always)]
    unsafe fn add(a: f32, b: f32) -> f32 {
        a + b
    }
    #[inline(always)]
    unsafe fn relu(value: f32) -> f32 {
        crate::relu_gate::relu(value)
    }
    #[inline(always)]
    unsafe fn sum(value: f32) -> f32 {
        value
    }
    #[inline(always)]
    unsafe fn transpose_block(from: *const f32, _: usize, to: *mut f32, _: usize) {
        unsafe { to.write(from.read()) }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{Avx2Fma, Avx512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::Isa;

    /// The `Isa` methods that are one intrinsic of the same name pattern at every x86 level.
    macro_rules! same_named_ops {
        ($v:ty, $zero:ident, $splat:ident, $load:ident, $store:ident, $fma:ident, $add:ident) => {
            #[inline(always)]
            unsafe fn zero() -> $v {
                unsafe { $zero() }
            }
            #[inline(always)]
            unsafe fn splat(value: f32) -> $v {
                unsafe { $splat(value) }
            }
            #[inline(always)]
            unsafe fn load(from: *const f32) -> $v {
                unsafe { $load(from) }
            }
            #[inline(always)]
            unsafe fn store(to: *mut f32, value: $v) {
                unsafe { $store(to, value) }
            }
            #[inline(always)]
            unsafe fn fma(a: $v, b: $v, c: $v) -> $v {
                unsafe { $fma(a, b, c) }
            }
            #[inline(always)]
            unsafe fn add(a: $v, b: $v) -> $v {
                unsafe { $add(a, b) }
            }
        };
    }

    #[derive(Clone, Copy)]
    pub(crate) struct Avx512;

    // SAFETY (all methods): the trait's contract; each wraps one AVX-512F operation.
    impl Isa for Avx512 {
        const LANES: usize = 16;
        const REGISTERS: usize = 32;
        type V = __m512;
        type Mask = __mmask16;

        same_named_ops!(
            __m512,
            _mm512_setzero_ps,
            _mm512_set1_ps,
            _mm512_loadu_ps,
            _mm512_storeu_ps,
            _mm512_fmadd_ps,
            _mm512_add_ps
        );

        #[inline(always)]
        unsafe fn first(count: usize) -> __mmask16 {
            if count >= 16 {
                0xFFFF
            } else {
                ((1u32 << count) - 1) as __mmask16
            }
        }
        #[inline(always)]
        unsafe fn load_masked(from: *const f32, mask: __mmask16) -> __m512 {
            unsafe { _mm512_maskz_loadu_ps(mask, from) }
        }
        #[inline(always)]
        unsafe fn store_masked(to: *mut f32, mask: __mmask16, value: __m512) {
            unsafe { _mm512_mask_storeu_ps(to, mask, value) }
        }
        /// `max(v, 0)` returns its second operand where the first is NaN: the NaN lanes are
        /// put back.
        #[inline(always)]
        unsafe fn relu(v: __m512) -> __m512 {
            unsafe {
                let nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
                _mm512_mask_mov_ps(_mm512_max_ps(v, _mm512_setzero_ps()), nan, v)
            }
        }
        #[inline(always)]
        unsafe fn sum(value: __m512) -> f32 {
            unsafe { _mm512_reduce_add_ps(value) }
        }
        /// 16 loads, 64 shuffles, 16 stores.
        #[inline(always)]
        unsafe fn transpose_block(
            from: *const f32,
            from_stride: usize,
            to: *mut f32,
            to_stride: usize,
        ) {
            unsafe {
                let mut a = [_mm512_setzero_ps(); 16];
                for (i, a) in a.iter_mut().enumerate() {
                    *a = _mm512_loadu_ps(from.add(i * from_stride));
                }
                // Interleave pairs of rows by 32-bit elements, then by 64-bit pairs.
                let mut t = [_mm512_setzero_ps(); 16];
                for i in 0..8 {
                    t[2 * i] = _mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]);
                    t[2 * i + 1] = _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]);
                }
                for i in 0..4 {
                    let (t0, t1, t2, t3) = (
                        _mm512_castps_pd(t[4 * i]),
                        _mm512_castps_pd(t[4 * i + 1]),
                        _mm512_castps_pd(t[4 * i + 2]),
                        _mm512_castps_pd(t[4 * i + 3]),
                    );
                    a[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(t0, t2));
                    a[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(t0, t2));
                    a[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(t1, t3));
                    a[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(t1, t3));
                }
                // Now a[4i + j] holds, in each 128-bit lane k, column 4k + j of rows 4i..4i+4.
                // Gather the lanes: first pairs of row groups, then the two halves.
                for i in 0..4 {
                    t[i] = _mm512_shuffle_f32x4::<0x88>(a[i], a[i + 4]);
                    t[i + 4] = _mm512_shuffle_f32x4::<0xdd>(a[i], a[i + 4]);
                    t[i + 8] = _mm512_shuffle_f32x4::<0x88>(a[i + 8], a[i + 12]);
                    t[i + 12] = _mm512_shuffle_f32x4::<0xdd>(a[i + 8], a[i + 12]);
                }
                for i in 0..4 {
                    a[i] = _mm512_shuffle_f32x4::<0x88>(t[i], t[i + 8]);
                    a[i + 8] = _mm512_shuffle_f32x4::<0xdd>(t[i], t[i + 8]);
                    a[i + 4] = _mm512_shuffle_f32x4::<0x88>(t[i + 4], t[i + 12]);
                    a[i + 12] = _mm512_shuffle_f32x4::<0xdd>(t[i + 4], t[i + 12]);
                }
                for (j, a) in a.iter().enumerate() {
                    _mm512_storeu_ps(to.add(j * to_stride), *a);
                }
            }
        }
    }

    #[derive(Clone, Copy)]
    pub(crate) struct Avx2Fma;

    /// A sliding window over this gives the mask of the first `n` of 8 lanes.
    static FIRST_LANES: [i32; 16] = [-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0];

    // SAFETY (all methods): the trait's contract; each wraps AVX2/FMA operations.
    impl Isa for Avx2Fma {
        const LANES: usize = 8;
        const REGISTERS: usize = 16;
        type V = __m256;
        type Mask = __m256i;

        same_named_ops!(
            __m256,
            _mm256_setzero_ps,
            _mm256_set1_ps,
            _mm256_loadu_ps,
            _mm256_storeu_ps,
            _mm256_fmadd_ps,
            _mm256_add_ps
        );

        #[inline(always)]
        unsafe fn first(count: usize) -> __m256i {
            let skip = 8 - count.min(8);
            unsafe { _mm256_loadu_si256(FIRST_LANES.as_ptr().add(skip).cast()) }
        }
        #[inline(always)]
        unsafe fn load_masked(from: *const f32, mask: __m256i) -> __m256 {
            unsafe { _mm256_maskload_ps(from, mask) }
        }
        #[inline(always)]
        unsafe fn store_masked(to: *mut f32, mask: __m256i, value: __m256) {
            unsafe { _mm256_maskstore_ps(to, mask, value) }
        }
        #[inline(always)]
        unsafe fn relu(v: __m256) -> __m256 {
            unsafe {
                let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v);
                _mm256_blendv_ps(_mm256_max_ps(v, _mm256_setzero_ps()), v, nan)
            }
        }
        #[inline(always)]
        unsafe fn sum(value: __m256) -> f32 {
            unsafe {
                let halves = _mm_add_ps(
                    _mm256_castps256_ps128(value),
                    _mm256_extractf128_ps::<1>(value),
                );
                let pairs = _mm_add_ps(halves, _mm_movehl_ps(halves, halves));
                _mm_cvtss_f32(_mm_add_ss(pairs, _mm_movehdup_ps(pairs)))
            }
        }
        /// 8 loads, 24 shuffles, 8 stores.
        #[inline(always)]
        unsafe fn transpose_block(
            from: *const f32,
            from_stride: usize,
            to: *mut f32,
            to_stride: usize,
        ) {
            unsafe {
                let mut a = [_mm256_setzero_ps(); 8];
                for (i, a) in a.iter_mut().enumerate() {
                    *a = _mm256_loadu_ps(from.add(i * from_stride));
                }
                let mut t = [_mm256_setzero_ps(); 8];
                for i in 0..4 {
                    t[2 * i] = _mm256_unpacklo_ps(a[2 * i], a[2 * i + 1]);
                    t[2 * i + 1] = _mm256_unpackhi_ps(a[2 * i], a[2 * i + 1]);
                }
                // Then by 64-bit pairs, as for AVX-512: a[4i + j] then holds, in each 128-bit
                // half k, column 4k + j of rows 4i..4i+4; the halves are swapped last.
                for i in 0..2 {
                    let (t0, t1, t2, t3) = (
                        _mm256_castps_pd(t[4 * i]),
                        _mm256_castps_pd(t[4 * i + 1]),
                        _mm256_castps_pd(t[4 * i + 2]),
                        _mm256_castps_pd(t[4 * i + 3]),
                    );
                    a[4 * i] = _mm256_castpd_ps(_mm256_unpacklo_pd(t0, t2));
                    a[4 * i + 1] = _mm256_castpd_ps(_mm256_unpackhi_pd(t0, t2));
                    a[4 * i + 2] = _mm256_castpd_ps(_mm256_unpacklo_pd(t1, t3));
                    a[4 * i + 3] = _mm256_castpd_ps(_mm256_unpackhi_pd(t1, t3));
                }
                for j in 0..4 {
                    let low = _mm256_permute2f128_ps::<0x20>(a[j], a[j + 4]);
                    let high = _mm256_permute2f128_ps::<0x31>(a[j], a[j + 4]);
                    _mm256_storeu_ps(to.add(j * to_stride), low);
                    _mm256_storeu_ps(to.add((j + 4) * to_stride), high);
                }
            }
        }
    }
}

#[cfg(target_arch = "aarch64")]
pub(crate) use arm::Neon;

#[cfg(target_arch = "aarch64")]
mod arm {
    use std::arch::aarch64::*;

    use super::Isa;

    #[derive(Clone, Copy)]
    pub(crate) struct Neon;

    // SAFETY (all methods): the trait's contract; each wraps NEON operations.
    impl Isa for Neon {
        const LANES: usize = 4;
        const REGISTERS: usize = 32;
        type V = float32x4_t;
        /// NEON has no masked loads or stores: the mask is the count of lanes, and a partial
        /// vector goes through a stack copy (the kernels need whole vectors at this level, see
        /// `direct::available`, so only the padding's row ends would take it).
        type Mask = usize;

        #[inline(always)]
        unsafe fn zero() -> float32x4_t {
            unsafe { vdupq_n_f32(0.0) }
        }
        #[inline(always)]
        unsafe fn splat(value: f32) -> float32x4_t {
            unsafe { vdupq_n_f32(value) }
        }
        #[inline(always)]
        unsafe fn load(from: *const f32) -> float32x4_t {
            unsafe { vld1q_f32(from) }
        }
        #[inline(always)]
        unsafe fn store(to: *mut f32, value: float32x4_t) {
            unsafe { vst1q_f32(to, value) }
        }
        #[inline(always)]
        unsafe fn first(count: usize) -> usize {
            count.min(4)
        }
        #[inline(always)]
        unsafe fn load_masked(from: *const f32, count: usize) -> float32x4_t {
            unsafe {
                if count >= 4 {
                    return vld1q_f32(from);
                }
                let mut lanes = [0.0f32; 4];
                std::ptr::copy_nonoverlapping(from, lanes.as_mut_ptr(), count);
                vld1q_f32(lanes.as_ptr())
            }
        }
        #[inline(always)]
        unsafe fn store_masked(to: *mut f32, count: usize, value: float32x4_t) {
            unsafe {
                if count >= 4 {
                    return vst1q_f32(to, value);
                }
                let mut lanes = [0.0f32; 4];
                vst1q_f32(lanes.as_mut_ptr(), value);
                std::ptr::copy_nonoverlapping(lanes.as_ptr(), to, count);
            }
        }
        #[inline(always)]
        unsafe fn fma(a: float32x4_t, b: float32x4_t, c: float32x4_t) -> float32x4_t {
            unsafe { vfmaq_f32(c, a, b) }
        }
        #[inline(always)]
        unsafe fn add(a: float32x4_t, b: float32x4_t) -> float32x4_t {
            unsafe { vaddq_f32(a, b) }
        }
        /// `FMAX` already gives +0 for -0 and a NaN for a NaN, but a quieted one: the NaN
        /// lanes (not equal to themselves) are put back as they were, as at the other levels.
        #[inline(always)]
        unsafe fn relu(v: float32x4_t) -> float32x4_t {
            unsafe { vbslq_f32(vceqq_f32(v, v), vmaxq_f32(v, vdupq_n_f32(0.0)), v) }
        }
        #[inline(always)]
        unsafe fn sum(value: float32x4_t) -> f32 {
            unsafe { vaddvq_f32(value) }
        }
        /// 4 loads, 8 permutes, 4 stores: pairs of rows interleaved by 32-bit elements, then
        /// by 64-bit pairs.
        #[inline(always)]
        unsafe fn transpose_block(
            from: *const f32,
            from_stride: usize,
            to: *mut f32,
            to_stride: usize,
        ) {
            unsafe {
                let a0 = vld1q_f32(from);
                let a1 = vld1q_f32(from.add(from_stride));
                let a2 = vld1q_f32(from.add(2 * from_stride));
                let a3 = vld1q_f32(from.add(3 * from_stride));
                // (No closures around intrinsics: one not inlined loses the target features.)
                let t0 = vreinterpretq_f64_f32(vtrn1q_f32(a0, a1));
                let t1 = vreinterpretq_f64_f32(vtrn2q_f32(a0, a1));
                let t2 = vreinterpretq_f64_f32(vtrn1q_f32(a2, a3));
                let t3 = vreinterpretq_f64_f32(vtrn2q_f32(a2, a3));
                vst1q_f32(to, vreinterpretq_f32_f64(vtrn1q_f64(t0, t2)));
                vst1q_f32(to.add(to_stride), vreinterpretq_f32_f64(vtrn1q_f64(t1, t3)));
                vst1q_f32(
                    to.add(2 * to_stride),
                    vreinterpretq_f32_f64(vtrn2q_f64(t0, t2)),
                );
                vst1q_f32(
                    to.add(3 * to_stride),
                    vreinterpretq_f32_f64(vtrn2q_f64(t1, t3)),
                );
            }
        }
    }
}

/// A command that starts this test binary again: directly, or under `CAE_TEST_RUNNER` (a
/// command line, such as `qemu-aarch64 -L /usr/aarch64-linux-gnu`) where the binary runs
/// emulated and a child it starts itself would not be (QEMU user mode runs only the process
/// it was given: the child exits with 127).
#[cfg(test)]
fn this_test_binary() -> std::process::Command {
    let exe = std::env::current_exe().expect("test binary");
    let runner = std::env::var("CAE_TEST_RUNNER").unwrap_or_default();
    let mut runner = runner.split_whitespace();
    match runner.next() {
        None => std::process::Command::new(exe),
        Some(program) => {
            let mut command = std::process::Command::new(program);
            command.args(runner).arg(exe);
            command
        }
    }
}

/// Runs `tests` of this test binary again in a child process at every other level this CPU
/// supports (`CAE_SIMD` is read once per process), and fails unless each passed there.
#[cfg(test)]
pub(crate) fn rerun_at_every_other_level(tests: &[&str]) {
    let active = SimdLevel::active();
    if std::env::var_os("CAE_SIMD").is_some() {
        return; // a rerun already: the parent covers the other levels
    }
    for level in SimdLevel::supported().into_iter().filter(|l| *l != active) {
        let run = this_test_binary()
            .arg("--exact")
            .args(tests)
            .args(["--test-threads", "1"])
            .env("CAE_SIMD", level.name())
            .output()
            .expect("rerun the test binary");
        let stdout = String::from_utf8_lossy(&run.stdout);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(
            run.status.success(),
            "CAE_SIMD={} run failed ({}):\n{stdout}\n{stderr}",
            level.name(),
            run.status
        );
        for test in tests {
            assert!(
                stdout.contains(&format!("test {test} ... ok")),
                "{test} did not run at CAE_SIMD={}:\n{stdout}",
                level.name()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_ordered_and_named() {
        let supported = SimdLevel::supported();
        assert_eq!(supported[0], SimdLevel::of_cpu());
        assert_eq!(supported.last(), Some(&SimdLevel::Portable));
        for level in &supported {
            assert_eq!(SimdLevel::from_name(level.name()), Ok(*level));
        }
        if SimdLevel::of_cpu() == SimdLevel::Avx512 {
            assert!(supported.contains(&SimdLevel::Avx2Fma));
        }
        // One architecture's levels are never another's.
        let x86 = supported.contains(&SimdLevel::Avx2Fma);
        assert!(!(x86 && supported.contains(&SimdLevel::Neon)));
        assert_eq!(
            cfg!(target_arch = "aarch64"),
            supported[0] == SimdLevel::Neon
        );
    }

    /// What the dispatching code reads from a level is what its instruction set declares.
    #[test]
    fn levels_have_their_instruction_sets_lanes_and_registers() {
        let of = |level: SimdLevel| (level.lanes(), level.registers());
        #[cfg(target_arch = "x86_64")]
        {
            assert_eq!(of(SimdLevel::Avx512), (Avx512::LANES, Avx512::REGISTERS));
            assert_eq!(of(SimdLevel::Avx2Fma), (Avx2Fma::LANES, Avx2Fma::REGISTERS));
        }
        #[cfg(target_arch = "aarch64")]
        assert_eq!(of(SimdLevel::Neon), (Neon::LANES, Neon::REGISTERS));
        assert_eq!(of(SimdLevel::Portable), (Scalar::LANES, Scalar::REGISTERS));
    }

    #[test]
    fn unknown_and_missing_levels_are_refused() {
        let unknown = SimdLevel::from_name("sse9").unwrap_err();
        assert!(
            unknown.contains("avx512, avx2, neon or portable"),
            "{unknown}"
        );
        for level in LEVELS {
            if !SimdLevel::supported().contains(&level) {
                let missing = SimdLevel::from_name(level.name()).unwrap_err();
                assert!(missing.contains("this CPU lacks"), "{missing}");
                assert!(missing.contains("portable"), "{missing}");
            }
        }
    }
}
