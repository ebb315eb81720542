//! Augmentation: random affine transforms as Keras' `ImageDataGenerator` draws and
//! applies them, and balancing a class-folder tree up to a target size per class.
//!
//! The seed project balanced its classes with
//! `ImageDataGenerator(rotation_range=40, width_shift_range=0.2, height_shift_range=0.2,
//! shear_range=0.2, zoom_range=0.2, horizontal_flip=True, fill_mode='nearest')`.
//! [`apply_transform`] reproduces Keras 3's `apply_transform` (which calls
//! `apply_affine_transform`, i.e. `scipy.ndimage.affine_transform` with `order=1`) to
//! within rounding: `tests/prepare.rs` compares it with outputs of the real Keras stored
//! under `tests/fixtures/keras/` (written by `scripts/keras_parity.py`).
//!
//! Choices, each made to match Keras (3.15, channels-last) unless said otherwise:
//!
//! - **Order.** The sampling matrix is `rotation · shift · shear · zoom` (each factor
//!   only when it is not the identity), taken about the image centre; then the image is
//!   flipped horizontally, then vertically, then its brightness is scaled.
//! - **Pull, not push.** The matrix maps an *output* pixel to the input position it
//!   samples, as `scipy.ndimage.affine_transform` does. So `zx > 1` shrinks the content
//!   (zooms out) and a positive shift moves the content towards the top-left.
//! - **Which axis a shift moves.** Keras builds the matrix in an `(x, y)` frame and then
//!   swaps the axes for the `(row, col)` array. The net effect: `tx` (drawn from
//!   `height_shift_range` times the *height*) moves the content along the columns, and
//!   `ty` (from `width_shift_range` times the *width*) along the rows. An output pixel
//!   `(r, c)` samples input `(r + ty, c + tx)` under a pure shift.
//! - **The centre.** Keras centres with `(height/2 - 0.5, width/2 - 0.5)` *before* that
//!   swap, so on non-square images it pivots about `(row = width/2 - 0.5,
//!   col = height/2 - 0.5)`, not the true centre. graft reproduces this, so an augmented
//!   set matches what the seed would have produced; on square images (the seed's
//!   photos are 348x348) the pivot is the true centre.
//! - **Shear** is in degrees (Keras 2.x before 2.2 took radians); **zoom** draws `zx` and
//!   `zy` independently from `[1 - z, 1 + z]`.
//! - **Interpolation** is bilinear (`order=1`), computed in `f64` like scipy, stored as
//!   `f32` like the `float32` image Keras works on, and converted to 8 bits by
//!   truncation, as Keras' `array_to_img` (`astype("uint8")`) does before a file is
//!   written.
//! - **Fill modes** are scipy's: `nearest` repeats the edge pixel; `constant` fills
//!   anything sampled outside `[0, len - 1]` with `cval`; `reflect` mirrors about the
//!   pixel edge (`d c b a | a b c d | d c b a`); `wrap` is scipy's legacy wrap, whose
//!   period is `len - 1`, not `len` (the last row/column repeats the first).
//! - **Brightness** scales each channel by the factor with truncation and clipping, as
//!   PIL's `ImageEnhance.Brightness` (which Keras calls) does.
//! - **Not reproduced:** Keras' `flow(save_to_dir=...)` stretches every saved image's
//!   range to 0..255 (`array_to_img(scale=True)`), changing colours image by image;
//!   graft writes the transformed pixels as they are. Keras' random draws come from
//!   numpy's global generator; graft derives one generator per output file (see
//!   [`copy_rng`]), so outputs never depend on thread count or order.
//!
//! Balancing ([`augment_folder`]) fills each class up to exactly the target size. The
//! seed made `floor(600 / count) - 1` copies of every image, which lands anywhere
//! between 300 and 1199 images per class; graft gives the first `extra % count`
//! originals one copy more than the rest instead, and copies classes already at or
//! above the target unchanged.

use std::collections::{BTreeMap, HashMap};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use ::image::RgbImage;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::dataset::{scan_images, ImageEntry, SkippedEntry};
use crate::error::{Error, Result};
use crate::image::{decode_rgb8, DecodeLimits};
use crate::output::{check_folder, prepare_folder, refuse_links_inside, Folder};
use crate::progress::Progress;

/// How the pixels a transform pulls from outside the image are filled (scipy's modes,
/// as Keras' `fill_mode` names them).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fill {
    /// Repeat the edge pixel: `a a a | a b c d | d d d`. The seed's choice.
    Nearest,
    /// Fill with one grey level `cval` (0..=255) in every channel.
    Constant(f64),
    /// Mirror about the pixel edge: `d c b a | a b c d | d c b a`.
    Reflect,
    /// scipy's legacy wrap, period `len - 1`: `b c d | a b c d | b c d`.
    Wrap,
}

/// One transform, with Keras' parameter names and meanings (see the module docs for
/// which axis each one moves).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TransformParams {
    /// Rotation in degrees.
    pub theta: f64,
    /// Shift in pixels; moves the content along the columns (Keras' `tx`).
    pub tx: f64,
    /// Shift in pixels; moves the content along the rows (Keras' `ty`).
    pub ty: f64,
    /// Shear angle in degrees.
    pub shear: f64,
    /// Zoom factor of the sampling grid along Keras' x (1 = none, > 1 zooms out).
    pub zx: f64,
    /// Zoom factor along Keras' y.
    pub zy: f64,
    pub flip_horizontal: bool,
    pub flip_vertical: bool,
    /// Brightness factor (1 = unchanged), or none to leave the pixels alone.
    pub brightness: Option<f64>,
}

impl Default for TransformParams {
    /// The identity.
    fn default() -> Self {
        TransformParams {
            theta: 0.0,
            tx: 0.0,
            ty: 0.0,
            shear: 0.0,
            zx: 1.0,
            zy: 1.0,
            flip_horizontal: false,
            flip_vertical: false,
            brightness: None,
        }
    }
}

/// Applies `params` to `image` as Keras' `ImageDataGenerator.apply_transform` does
/// (see the module docs for each convention). Deterministic: no randomness in here.
pub fn apply_transform(image: &RgbImage, params: &TransformParams, fill: Fill) -> RgbImage {
    let (width, height) = image.dimensions();
    let mut out = match sampling_matrix(params, height, width) {
        Some(matrix) => resample_bilinear(image, &matrix, fill),
        None => image.clone(),
    };
    if params.flip_horizontal {
        ::image::imageops::flip_horizontal_in_place(&mut out);
    }
    if params.flip_vertical {
        ::image::imageops::flip_vertical_in_place(&mut out);
    }
    if let Some(factor) = params.brightness {
        scale_brightness(&mut out, factor);
    }
    out
}

type Mat3 = [[f64; 3]; 3];

fn matmul(a: &Mat3, b: &Mat3) -> Mat3 {
    let mut c = [[0.0; 3]; 3];
    for (i, row) in c.iter_mut().enumerate() {
        for (j, cell) in row.iter_mut().enumerate() {
            *cell = a[i][0] * b[0][j] + a[i][1] * b[1][j] + a[i][2] * b[2][j];
        }
    }
    c
}

/// The matrix that maps an output `(row, col, 1)` to the input position it samples,
/// built step by step as Keras' `apply_affine_transform` builds it; `None` when every
/// parameter is the identity (Keras then leaves the pixels untouched).
fn sampling_matrix(params: &TransformParams, height: u32, width: u32) -> Option<Mat3> {
    let mut matrix: Option<Mat3> = None;
    let mut compose = |factor: Mat3| {
        matrix = Some(match matrix {
            Some(m) => matmul(&m, &factor),
            None => factor,
        });
    };
    if params.theta != 0.0 {
        let theta = params.theta.to_radians();
        let (sin, cos) = (theta.sin(), theta.cos());
        compose([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]]);
    }
    if params.tx != 0.0 || params.ty != 0.0 {
        compose([
            [1.0, 0.0, params.tx],
            [0.0, 1.0, params.ty],
            [0.0, 0.0, 1.0],
        ]);
    }
    if params.shear != 0.0 {
        let shear = params.shear.to_radians();
        compose([
            [1.0, -shear.sin(), 0.0],
            [0.0, shear.cos(), 0.0],
            [0.0, 0.0, 1.0],
        ]);
    }
    if params.zx != 1.0 || params.zy != 1.0 {
        compose([
            [params.zx, 0.0, 0.0],
            [0.0, params.zy, 0.0],
            [0.0, 0.0, 1.0],
        ]);
    }
    let matrix = matrix?;
    // Keras' transform_matrix_offset_center(matrix, h, w): the first coordinate is
    // centred with the height and the second with the width ...
    let o_x = f64::from(height) / 2.0 - 0.5;
    let o_y = f64::from(width) / 2.0 - 0.5;
    let offset = [[1.0, 0.0, o_x], [0.0, 1.0, o_y], [0.0, 0.0, 1.0]];
    let reset = [[1.0, 0.0, -o_x], [0.0, 1.0, -o_y], [0.0, 0.0, 1.0]];
    let centred = matmul(&matmul(&offset, &matrix), &reset);
    // ... and only then are the first two rows and columns swapped to address the
    // (row, col) array, which is why the pivot is off-centre on non-square images.
    let m = centred;
    Some([
        [m[1][1], m[1][0], m[1][2]],
        [m[0][1], m[0][0], m[0][2]],
        [0.0, 0.0, 1.0],
    ])
}

/// Where scipy samples along one axis of length `len` for the input coordinate `at`:
/// `None` for the constant fill, else the two neighbouring indices and their weights.
fn axis_taps(at: f64, len: usize, fill: Fill) -> Option<([usize; 2], [f64; 2])> {
    let cc = map_coordinate(at, len, fill);
    // scipy: a mapped coordinate of -1 or less means "use cval".
    if cc <= -1.0 {
        return None;
    }
    let floor = cc.floor();
    let start = floor as i64;
    // scipy's get_spline_interpolation_weights for order 1: the weights sum to one by
    // construction of the last one.
    let w0 = 1.0 - (cc - floor);
    let w1 = 1.0 - w0;
    // After mapping, only `reflect` can land half a pixel outside, where scipy (>= 1.6)
    // extends with the edge pixel; the other modes only touch an outside tap with zero
    // weight. Clamping covers both.
    let last = len as i64 - 1;
    let clamp = |i: i64| i.clamp(0, last) as usize;
    Some(([clamp(start), clamp(start + 1)], [w0, w1]))
}

/// scipy.ndimage's `map_coordinate` for the four fill modes Keras exposes: folds a
/// coordinate outside `[0, len - 1]` back inside (or to -1 for the constant fill).
/// The integer casts truncate toward zero like scipy's `(npy_intp)` casts.
fn map_coordinate(at: f64, len: usize, fill: Fill) -> f64 {
    let len_f = len as f64;
    if at < 0.0 {
        match fill {
            Fill::Nearest => 0.0,
            Fill::Constant(_) => -1.0,
            Fill::Reflect => {
                if len <= 1 {
                    return 0.0;
                }
                let sz2 = 2.0 * len_f;
                let mut v = at;
                if v < -sz2 {
                    v += sz2 * ((-v / sz2) as i64) as f64;
                }
                if v < -len_f {
                    v + sz2
                } else {
                    -v - 1.0
                }
            }
            Fill::Wrap => {
                if len <= 1 {
                    return 0.0;
                }
                let sz = len_f - 1.0;
                at + sz * (((-at / sz) as i64) + 1) as f64
            }
        }
    } else if at > len_f - 1.0 {
        match fill {
            Fill::Nearest => len_f - 1.0,
            Fill::Constant(_) => -1.0,
            Fill::Reflect => {
                if len <= 1 {
                    return 0.0;
                }
                let sz2 = 2.0 * len_f;
                let v = at - sz2 * ((at / sz2) as i64) as f64;
                if v >= len_f {
                    sz2 - v - 1.0
                } else {
                    v
                }
            }
            Fill::Wrap => {
                if len <= 1 {
                    return 0.0;
                }
                let sz = len_f - 1.0;
                at - sz * ((at / sz) as i64) as f64
            }
        }
    } else {
        at
    }
}

/// Keras' `float32 -> uint8` conversion (`astype("uint8")`): truncation. Rust's `as`
/// also saturates, which keeps an out-of-range `cval` from wrapping around.
fn to_u8(value: f64) -> u8 {
    (value as f32) as u8
}

/// `scipy.ndimage.affine_transform(channel, matrix, offset, order=1, mode, cval)` on
/// each channel, summing the taps in scipy's order so results round the same way.
fn resample_bilinear(image: &RgbImage, matrix: &Mat3, fill: Fill) -> RgbImage {
    let (width, height) = image.dimensions();
    let (w, h) = (width as usize, height as usize);
    let src = image.as_raw();
    let mut out = vec![0u8; src.len()];
    let cval = match fill {
        Fill::Constant(c) => to_u8(c),
        _ => 0,
    };
    for (r, out_row) in out.chunks_exact_mut(w * 3).enumerate() {
        let rf = r as f64;
        for c in 0..w {
            let cf = c as f64;
            let at_row = 0.0 + rf * matrix[0][0] + cf * matrix[0][1] + matrix[0][2];
            let at_col = 0.0 + rf * matrix[1][0] + cf * matrix[1][1] + matrix[1][2];
            let pixel = &mut out_row[c * 3..c * 3 + 3];
            let taps = axis_taps(at_row, h, fill).zip(axis_taps(at_col, w, fill));
            let Some(((rows, row_w), (cols, col_w))) = taps else {
                pixel.fill(cval);
                continue;
            };
            for (channel, value) in pixel.iter_mut().enumerate() {
                let mut t = 0.0;
                for (ri, rw) in rows.iter().zip(row_w) {
                    for (ci, cw) in cols.iter().zip(col_w) {
                        let v = f64::from(src[(ri * w + ci) * 3 + channel]);
                        t += v * rw * cw;
                    }
                }
                *value = to_u8(t);
            }
        }
    }
    // The buffer has exactly width * height * 3 bytes, so this cannot fail; the
    // fallback keeps the function total without a panic path.
    RgbImage::from_raw(width, height, out).unwrap_or_else(|| image.clone())
}

/// PIL's `ImageEnhance.Brightness(img).enhance(factor)`: a blend with black, computed
/// in `f32`, clipped, truncated.
fn scale_brightness(image: &mut RgbImage, factor: f64) {
    let alpha = factor as f32;
    for value in image.iter_mut() {
        let t = alpha * f32::from(*value);
        *value = if t <= 0.0 {
            0
        } else if t >= 255.0 {
            255
        } else {
            t as u8
        };
    }
}

/// The ranges transforms are drawn from: `ImageDataGenerator`'s arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct AugmentSettings {
    /// Degrees; the angle is drawn from `[-r, r)`.
    pub rotation_range: f64,
    /// A fraction of the width when below 1, else pixels; drawn from `[-r, r)`.
    pub width_shift_range: f64,
    /// A fraction of the height when below 1, else pixels.
    pub height_shift_range: f64,
    /// Degrees.
    pub shear_range: f64,
    /// `zx` and `zy` are drawn independently from `[lo, hi)`; Keras turns a single
    /// `zoom_range=z` into `(1 - z, 1 + z)` (see [`AugmentSettings::zoom`]).
    pub zoom_range: (f64, f64),
    pub horizontal_flip: bool,
    pub vertical_flip: bool,
    /// Brightness factor drawn from `[a, b)`, or none for no brightness change.
    pub brightness_range: Option<(f64, f64)>,
    pub fill: Fill,
}

impl Default for AugmentSettings {
    /// The seed project's settings.
    fn default() -> Self {
        AugmentSettings {
            rotation_range: 40.0,
            width_shift_range: 0.2,
            height_shift_range: 0.2,
            shear_range: 0.2,
            zoom_range: Self::zoom(0.2),
            horizontal_flip: true,
            vertical_flip: false,
            brightness_range: None,
            fill: Fill::Nearest,
        }
    }
}

impl AugmentSettings {
    /// Settings that never change a pixel.
    pub fn none() -> Self {
        AugmentSettings {
            rotation_range: 0.0,
            width_shift_range: 0.0,
            height_shift_range: 0.0,
            shear_range: 0.0,
            zoom_range: (1.0, 1.0),
            horizontal_flip: false,
            vertical_flip: false,
            brightness_range: None,
            fill: Fill::Nearest,
        }
    }

    /// Keras' reading of a single `zoom_range` value: `[1 - z, 1 + z]`.
    pub fn zoom(z: f64) -> (f64, f64) {
        (1.0 - z, 1.0 + z)
    }

    /// Refuses ranges Keras would refuse or that make no sense, naming the flag.
    pub fn validate(&self) -> Result<()> {
        let bad = |flag: &str, why: String| Err(Error::Invalid(format!("--{flag}: {why}")));
        for (flag, value) in [
            ("rotation-range", self.rotation_range),
            ("width-shift-range", self.width_shift_range),
            ("height-shift-range", self.height_shift_range),
            ("shear-range", self.shear_range),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                return bad(flag, format!("{value} must be a number of 0 or more"));
            }
        }
        let (lo, hi) = self.zoom_range;
        if !(lo.is_finite() && hi.is_finite() && lo > 0.0 && lo <= hi) {
            return bad(
                "zoom-range",
                format!(
                    "gives zoom factors [{lo}, {hi}]; pass a value below 1 (0.2 means 0.8..1.2)"
                ),
            );
        }
        if let Some((a, b)) = self.brightness_range {
            if !(a.is_finite() && b.is_finite() && a >= 0.0 && a <= b) {
                return bad(
                    "brightness-range",
                    format!("{a},{b} must be two factors with 0 <= a <= b, such as 0.8,1.2"),
                );
            }
        }
        if let Fill::Constant(cval) = self.fill {
            if !(0.0..=255.0).contains(&cval) {
                return bad("cval", format!("{cval} must be a grey level from 0 to 255"));
            }
        }
        Ok(())
    }

    /// Draws one transform for an image of `width` x `height`, in the order and with
    /// the scaling of Keras' `get_random_transform` (the random stream itself differs:
    /// numpy's generator is not reproduced).
    pub fn random_params<R: Rng>(&self, width: u32, height: u32, rng: &mut R) -> TransformParams {
        let theta = symmetric(rng, self.rotation_range);
        // Keras: tx comes from height_shift_range scaled by the rows, ty from
        // width_shift_range scaled by the columns; ranges of 1 or more are pixels.
        let mut tx = symmetric(rng, self.height_shift_range);
        if self.height_shift_range < 1.0 {
            tx *= f64::from(height);
        }
        let mut ty = symmetric(rng, self.width_shift_range);
        if self.width_shift_range < 1.0 {
            ty *= f64::from(width);
        }
        let shear = symmetric(rng, self.shear_range);
        let (zx, zy) = if self.zoom_range == (1.0, 1.0) {
            (1.0, 1.0)
        } else {
            (between(rng, self.zoom_range), between(rng, self.zoom_range))
        };
        // Keras draws both coins even when a flip is off; so do we, so that turning
        // one flip on does not change every other parameter of a seeded run.
        let flip_horizontal = rng.gen::<f64>() < 0.5 && self.horizontal_flip;
        let flip_vertical = rng.gen::<f64>() < 0.5 && self.vertical_flip;
        let brightness = self.brightness_range.map(|range| between(rng, range));
        TransformParams {
            theta,
            tx,
            ty,
            shear,
            zx,
            zy,
            flip_horizontal,
            flip_vertical,
            brightness,
        }
    }
}

/// numpy's `uniform(-r, r)`, or 0 for a zero range as Keras' `if self.rotation_range:`.
fn symmetric<R: Rng>(rng: &mut R, r: f64) -> f64 {
    if r > 0.0 {
        rng.gen_range(-r..r)
    } else {
        0.0
    }
}

/// numpy's `uniform(lo, hi)`; a collapsed range gives its one value.
fn between<R: Rng>(rng: &mut R, (lo, hi): (f64, f64)) -> f64 {
    if hi > lo {
        rng.gen_range(lo..hi)
    } else {
        lo
    }
}

/// The generator for augmented copy `k` of `original` in `class`: a pure function of
/// its inputs, so each output file is the same whatever the thread count, the order
/// of work, or where the dataset lives (`class` and `original` are relative names).
pub fn copy_rng(seed: u64, class: &str, original: &str, k: u64) -> ChaCha8Rng {
    let mut hasher = Sha256::new();
    hasher.update(b"graft augment v1\0");
    hasher.update(seed.to_le_bytes());
    // Length prefixes keep ("ab", "c") and ("a", "bc") apart.
    for part in [class, original] {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.update(k.to_le_bytes());
    ChaCha8Rng::from_seed(hasher.finalize().into())
}

/// The name of augmented copy `k` of the file `original`: `<stem>_nohash_<k>.jpg`.
/// The split rule drops everything from `_nohash_` on before hashing a file name, so
/// every copy lands in the same train/validation/test split as its original.
pub fn copy_name(original: &str, k: u64) -> String {
    let stem = Path::new(original)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| original.to_string());
    format!("{stem}_nohash_{k}.jpg")
}

/// What [`augment_folder`] does beyond the transform ranges.
#[derive(Debug, Clone)]
pub struct AugmentOptions {
    /// Images per class after balancing.
    pub class_size: u64,
    pub settings: AugmentSettings,
    pub seed: u64,
    /// JPEG quality of the augmented copies (1..=100).
    pub jpeg_quality: u8,
    pub limits: DecodeLimits,
}

/// One class folder of the source tree and what balancing adds to it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassPlan {
    /// The folder relative to the source root, with `/` separators.
    pub folder: String,
    /// The class's images, sorted.
    pub originals: Vec<ImageEntry>,
    /// How many augmented copies of each original (same order as `originals`).
    pub copies: Vec<u64>,
}

impl ClassPlan {
    pub fn extra(&self) -> u64 {
        self.copies.iter().sum()
    }
}

/// How many copies of each of `count` originals fill a class up to `class_size`:
/// everyone gets `extra / count`, the first `extra % count` one more.
pub fn copies_per_original(count: usize, class_size: u64) -> Vec<u64> {
    let n = count as u64;
    if n == 0 || n >= class_size {
        return vec![0; count];
    }
    let extra = class_size - n;
    (0..n)
        .map(|i| extra / n + u64::from(i < extra % n))
        .collect()
}

/// What balancing will do: the classes and the images that belong to none.
#[derive(Debug, Clone, PartialEq)]
pub struct AugmentPlan {
    pub classes: Vec<ClassPlan>,
    /// Images directly in the source root: in no class, so neither copied nor
    /// augmented (training ignores them too).
    pub unassigned: Vec<ImageEntry>,
    /// Entries of the source walk that could not be read, each with its reason.
    pub skipped: Vec<SkippedEntry>,
}

/// The classes under `src` (a class is a folder that directly holds images) and the
/// copies each needs. Refuses names that would collide in the output.
pub fn plan_augment(src: &Path, class_size: u64) -> Result<AugmentPlan> {
    plan_usable(src, class_size, |_| None).map(|(plan, _)| plan)
}

/// [`plan_augment`] over the originals `problem` finds nothing wrong with: the others
/// are neither copied nor counted toward the class size, and come back as failures.
fn plan_usable(
    src: &Path,
    class_size: u64,
    problem: impl Fn(&ImageEntry) -> Option<String> + Sync,
) -> Result<(AugmentPlan, Vec<Failure>)> {
    if class_size == 0 {
        return Err(Error::Invalid("--class-size must be 1 or more".into()));
    }
    let mut classes: BTreeMap<String, Vec<ImageEntry>> = BTreeMap::new();
    let mut unassigned = Vec::new();
    let scan = scan_images(src)?;
    for entry in scan.images {
        match entry.relative.rsplit_once('/') {
            Some((folder, _)) => classes.entry(folder.to_string()).or_default().push(entry),
            None => unassigned.push(entry),
        }
    }
    if classes.is_empty() {
        return Err(Error::invalid_input(
            src,
            "holds no class folders with images; expected one folder per class with the \
             images inside (graft organize makes this layout from a labels CSV)",
        ));
    }
    let mut plans = Vec::with_capacity(classes.len());
    let mut failures = Vec::new();
    for (folder, originals) in classes {
        let problems: Vec<Option<String>> = originals.par_iter().map(&problem).collect();
        let mut usable = Vec::with_capacity(originals.len());
        for (entry, problem) in originals.into_iter().zip(problems) {
            match problem {
                None => usable.push(entry),
                Some(reason) => failures.push(Failure {
                    path: entry.path,
                    reason,
                }),
            }
        }
        let originals = usable;
        let copies = copies_per_original(originals.len(), class_size);
        check_output_names(src, &folder, &originals, &copies)?;
        plans.push(ClassPlan {
            folder,
            originals,
            copies,
        });
    }
    Ok((
        AugmentPlan {
            classes: plans,
            unassigned,
            skipped: scan.skipped,
        },
        failures,
    ))
}

/// Two originals with one stem (`a.png`, `a.jpg`) would write the same copies, and an
/// original already named like a copy would be overwritten; refuse both, naming files.
/// Compared without letter case, as on the file systems of macOS and Windows.
fn check_output_names(
    src: &Path,
    folder: &str,
    originals: &[ImageEntry],
    copies: &[u64],
) -> Result<()> {
    let mut taken: HashMap<String, &ImageEntry> = originals
        .iter()
        .map(|e| (file_name(e).to_lowercase(), e))
        .collect();
    for (entry, &n) in originals.iter().zip(copies) {
        for k in 0..n {
            let name = copy_name(file_name(entry), k);
            if let Some(other) = taken.insert(name.to_lowercase(), entry) {
                let class_dir = src.join(folder);
                return Err(Error::invalid_input(
                    class_dir,
                    format!(
                        "augmenting {} would write {name}, which {} also gives; \
                         rename one of them so that no two images share a name before \
                         the extension, and none ends in _nohash_<number>",
                        entry.relative,
                        if other == entry {
                            "an earlier copy".to_string()
                        } else {
                            other.relative.clone()
                        },
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn file_name(entry: &ImageEntry) -> &str {
    entry.relative.rsplit('/').next().unwrap_or(&entry.relative)
}

/// One class after [`augment_folder`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassOutcome {
    pub folder: String,
    pub originals: u64,
    /// Augmented copies present in the output (written now or by an earlier run).
    pub augmented: u64,
}

/// An image that could not be used; the run went on without it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub path: PathBuf,
    pub reason: String,
}

#[derive(Debug, Clone, Default)]
pub struct AugmentReport {
    pub classes: Vec<ClassOutcome>,
    /// Files written by this run.
    pub written: u64,
    /// Files an earlier run had already written (left as they were).
    pub already_done: u64,
    pub failed: Vec<Failure>,
    /// Images directly in the source root, left out (see [`AugmentPlan::unassigned`]).
    pub unassigned: Vec<PathBuf>,
}

/// Copies every image under `src` to `dst` (same relative path) and adds augmented
/// copies until each class folder holds `options.class_size` images. Parallel; each
/// file is written atomically; files already in `dst` are kept, so a rerun finishes
/// an interrupted one. An original that cannot be decoded is reported in
/// [`AugmentReport::failed`] and left out: its class is filled with the others.
pub fn augment_folder(
    src: &Path,
    dst: &Path,
    options: &AugmentOptions,
    progress: &dyn Progress,
) -> Result<AugmentReport> {
    options.settings.validate()?;
    if !(1..=100).contains(&options.jpeg_quality) {
        return Err(Error::Invalid(format!(
            "--quality {} must be from 1 to 100",
            options.jpeg_quality
        )));
    }
    refuse_nested(src, dst)?;
    // A refused --output is said before the originals are decoded.
    check_folder(dst, Folder::AppendOnly, "--output")?;
    // Every original is decoded once up front: one that cannot be (empty, truncated,
    // not an image) is reported and left out, neither copied verbatim nor counted, so
    // that the class is filled with copies of the good ones.
    let (
        AugmentPlan {
            classes: plans,
            unassigned,
            skipped,
        },
        broken,
    ) = plan_usable(src, options.class_size, |entry| {
        decode_rgb8(&entry.path, options.limits)
            .err()
            .map(|err| format!("{err}; left out of the balanced copy"))
    })?;
    let class_dirs: Vec<PathBuf> = plans.iter().map(|p| target_dir(dst, p)).collect();
    refuse_links_inside(dst, class_dirs.iter().map(PathBuf::as_path), "--output")?;
    prepare_folder(dst, Folder::AppendOnly, "--output")?;
    for dir in &class_dirs {
        crate::fsx::clean_stale_temps(dir)?;
    }
    for entry in &skipped {
        progress.message(&format!("skipped {entry}"));
    }
    for failure in &broken {
        progress.message(&format!(
            "skipped {}: {}",
            failure.path.display(),
            failure.reason
        ));
    }

    let total: u64 = plans
        .iter()
        .map(|p| p.originals.len() as u64 + p.extra())
        .sum();
    progress.begin("augment", total);
    let written = AtomicU64::new(0);
    let already = AtomicU64::new(0);
    let failed = Mutex::new(broken);
    let tasks: Vec<(&ClassPlan, usize)> = plans
        .iter()
        .flat_map(|p| (0..p.originals.len()).map(move |i| (p, i)))
        .collect();
    let result = tasks.par_iter().try_for_each(|&(plan, i)| {
        let outcome = augment_one(plan, i, dst, options)?;
        written.fetch_add(outcome.written, Ordering::Relaxed);
        already.fetch_add(outcome.already, Ordering::Relaxed);
        if let Some(failure) = outcome.failure {
            progress.message(&format!(
                "skipped {}: {}",
                failure.path.display(),
                failure.reason
            ));
            if let Ok(mut list) = failed.lock() {
                list.push(failure);
            }
        }
        progress.advance(1 + plan.copies[i]);
        Ok::<(), Error>(())
    });
    progress.finish();
    result?;

    let mut failed = failed.into_inner().unwrap_or_default();
    failed.extend(skipped.into_iter().map(|entry| Failure {
        path: entry.path,
        reason: entry.reason,
    }));
    failed.sort_by(|a, b| a.path.cmp(&b.path));
    let classes = plans
        .iter()
        .map(|plan| ClassOutcome {
            folder: plan.folder.clone(),
            originals: plan.originals.len() as u64,
            augmented: plan
                .originals
                .iter()
                .zip(&plan.copies)
                .map(|(entry, &n)| {
                    (0..n)
                        .filter(|&k| copy_target(dst, plan, entry, k).is_file())
                        .count() as u64
                })
                .sum(),
        })
        .collect();
    Ok(AugmentReport {
        classes,
        written: written.into_inner(),
        already_done: already.into_inner(),
        failed,
        unassigned: unassigned.into_iter().map(|e| e.path).collect(),
    })
}

/// A destination inside the source would be scanned as more classes on the next run;
/// a source inside the destination would mix copies with originals.
fn refuse_nested(src: &Path, dst: &Path) -> Result<()> {
    std::fs::canonicalize(src).map_err(|e| Error::io(src, e))?;
    crate::output::refuse_nested(dst, "--output", src, "the source folder")
}

fn target_dir(dst: &Path, plan: &ClassPlan) -> PathBuf {
    plan.folder
        .split('/')
        .filter(|part| !part.is_empty())
        .fold(dst.to_path_buf(), |acc, part| acc.join(part))
}

fn copy_target(dst: &Path, plan: &ClassPlan, entry: &ImageEntry, k: u64) -> PathBuf {
    target_dir(dst, plan).join(copy_name(file_name(entry), k))
}

struct OneOutcome {
    written: u64,
    already: u64,
    failure: Option<Failure>,
}

/// Copies original `i` of `plan` and writes its augmented copies that are missing.
fn augment_one(
    plan: &ClassPlan,
    i: usize,
    dst: &Path,
    options: &AugmentOptions,
) -> Result<OneOutcome> {
    let entry = &plan.originals[i];
    let mut outcome = OneOutcome {
        written: 0,
        already: 0,
        failure: None,
    };
    let copy_of_original = target_dir(dst, plan).join(file_name(entry));
    if copy_of_original.is_file() {
        outcome.already += 1;
    } else {
        let bytes = std::fs::read(&entry.path).map_err(|e| Error::io(&entry.path, e))?;
        crate::fsx::write_atomic(&copy_of_original, &bytes)?;
        outcome.written += 1;
    }
    let missing: Vec<u64> = (0..plan.copies[i])
        .filter(|&k| !copy_target(dst, plan, entry, k).is_file())
        .collect();
    outcome.already += plan.copies[i] - missing.len() as u64;
    if missing.is_empty() {
        return Ok(outcome);
    }
    let image = match decode_rgb8(&entry.path, options.limits) {
        Ok(image) => image,
        Err(err) => {
            outcome.failure = Some(Failure {
                path: entry.path.clone(),
                reason: format!("{err}; its class gets {} copies fewer", missing.len()),
            });
            return Ok(outcome);
        }
    };
    let (width, height) = image.dimensions();
    missing.par_iter().try_for_each(|&k| {
        let mut rng = copy_rng(options.seed, &plan.folder, file_name(entry), k);
        let params = options.settings.random_params(width, height, &mut rng);
        let augmented = apply_transform(&image, &params, options.settings.fill);
        let target = copy_target(dst, plan, entry, k);
        write_jpeg(&target, &augmented, options.jpeg_quality)
    })?;
    outcome.written += missing.len() as u64;
    Ok(outcome)
}

/// Encodes `image` as JPEG and writes it atomically.
pub fn write_jpeg(path: &Path, image: &RgbImage, quality: u8) -> Result<()> {
    let mut bytes = Vec::new();
    ::image::codecs::jpeg::JpegEncoder::new_with_quality(Cursor::new(&mut bytes), quality)
        .encode_image(image)
        .map_err(|e| Error::invalid_input(path, format!("cannot encode JPEG: {e}")))?;
    crate::fsx::write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{any, prop_assert, prop_assert_eq, proptest, ProptestConfig};

    fn image_from(width: u32, height: u32, seed: u64) -> RgbImage {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        RgbImage::from_fn(width, height, |_, _| ::image::Rgb(rng.gen()))
    }

    #[test]
    fn copies_fill_a_class_exactly_and_spread_evenly() {
        assert_eq!(copies_per_original(5, 12), vec![2, 2, 1, 1, 1]);
        assert_eq!(copies_per_original(5, 12).iter().sum::<u64>() + 5, 12);
        assert_eq!(copies_per_original(12, 12), vec![0; 12]);
        assert_eq!(copies_per_original(20, 12), vec![0; 20]);
        assert_eq!(copies_per_original(1, 600), vec![599]);
        // The seed's floor(600/count) - 1 loop would give 250 * 1 + 250 = 500 here.
        assert_eq!(copies_per_original(250, 600).iter().sum::<u64>(), 350);
    }

    #[test]
    fn copy_names_keep_the_split_key() {
        assert_eq!(copy_name("0042.png", 3), "0042_nohash_3.jpg");
        assert_eq!(copy_name("a.b.jpeg", 0), "a.b_nohash_0.jpg");
    }

    #[test]
    fn copy_rng_depends_on_every_input_and_nothing_else() {
        let draw = |s, c: &str, o: &str, k| copy_rng(s, c, o, k).gen::<u64>();
        let base = draw(1, "milk", "a.jpg", 0);
        assert_eq!(base, draw(1, "milk", "a.jpg", 0));
        assert_ne!(base, draw(2, "milk", "a.jpg", 0));
        assert_ne!(base, draw(1, "milkx", "a.jpg", 0));
        assert_ne!(base, draw(1, "milk", "b.jpg", 0));
        assert_ne!(base, draw(1, "milk", "a.jpg", 1));
        assert_ne!(draw(1, "ab", "c", 0), draw(1, "a", "bc", 0));
    }

    #[test]
    fn seed_defaults_match_the_seed_project() {
        let s = AugmentSettings::default();
        assert_eq!(s.rotation_range, 40.0);
        assert_eq!((s.width_shift_range, s.height_shift_range), (0.2, 0.2));
        assert_eq!(s.shear_range, 0.2);
        assert_eq!(s.zoom_range, (0.8, 1.2));
        assert!(s.horizontal_flip && !s.vertical_flip);
        assert_eq!(s.fill, Fill::Nearest);
        s.validate().unwrap();
    }

    #[test]
    fn drawn_params_stay_in_their_ranges() {
        let s = AugmentSettings {
            brightness_range: Some((0.5, 1.5)),
            ..AugmentSettings::default()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for _ in 0..500 {
            let p = s.random_params(100, 50, &mut rng);
            assert!(p.theta.abs() <= 40.0);
            assert!(p.tx.abs() <= 0.2 * 50.0, "tx scales with the height");
            assert!(p.ty.abs() <= 0.2 * 100.0, "ty scales with the width");
            assert!(p.shear.abs() <= 0.2);
            assert!((0.8..1.2).contains(&p.zx) && (0.8..1.2).contains(&p.zy));
            assert!(!p.flip_vertical);
            assert!(p.brightness.is_some_and(|b| (0.5..1.5).contains(&b)));
        }
    }

    #[test]
    fn validation_names_the_flag() {
        let error_of = |s: AugmentSettings| s.validate().unwrap_err().to_string();
        let err = error_of(AugmentSettings {
            rotation_range: -1.0,
            ..AugmentSettings::default()
        });
        assert!(err.contains("--rotation-range"), "{err}");
        let err = error_of(AugmentSettings {
            zoom_range: AugmentSettings::zoom(1.5),
            ..AugmentSettings::default()
        });
        assert!(err.contains("--zoom-range"), "{err}");
        let err = error_of(AugmentSettings {
            fill: Fill::Constant(300.0),
            ..AugmentSettings::default()
        });
        assert!(err.contains("--cval"), "{err}");
    }

    #[test]
    fn map_coordinate_follows_scipy() {
        // Values checked against scipy.ndimage.affine_transform on [10, 20, 30, 40].
        assert_eq!(map_coordinate(-0.5, 4, Fill::Reflect), -0.5);
        assert_eq!(map_coordinate(-3.3, 4, Fill::Reflect), 3.3 - 1.0);
        assert_eq!(map_coordinate(3.5, 4, Fill::Reflect), 3.5);
        assert_eq!(map_coordinate(-0.5, 4, Fill::Wrap), 2.5);
        assert_eq!(map_coordinate(3.5, 4, Fill::Wrap), 0.5);
        assert_eq!(map_coordinate(-0.5, 4, Fill::Constant(0.0)), -1.0);
        assert_eq!(map_coordinate(7.0, 4, Fill::Nearest), 3.0);
    }

    #[test]
    fn rotating_half_a_turn_about_the_centre_of_a_square_flips_both_ways() {
        let img = image_from(9, 9, 3);
        let p = TransformParams {
            theta: 180.0,
            ..TransformParams::default()
        };
        let rotated = apply_transform(&img, &p, Fill::Nearest);
        let mut flipped = img.clone();
        ::image::imageops::flip_horizontal_in_place(&mut flipped);
        ::image::imageops::flip_vertical_in_place(&mut flipped);
        // sin(pi) is not exactly 0, so allow truncation to land one level lower.
        for (a, b) in rotated.iter().zip(flipped.iter()) {
            assert!(a.abs_diff(*b) <= 1, "{a} vs {b}");
        }
    }

    #[test]
    fn brightness_truncates_and_clips_like_pil() {
        let mut img = RgbImage::from_raw(1, 1, vec![10, 200, 255]).unwrap();
        scale_brightness(&mut img, 1.5);
        assert_eq!(img.as_raw(), &vec![15, 255, 255]);
        let mut img = RgbImage::from_raw(1, 1, vec![11, 201, 255]).unwrap();
        scale_brightness(&mut img, 0.5);
        assert_eq!(img.as_raw(), &vec![5, 100, 127]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn zero_ranges_are_the_identity(w in 1u32..24, h in 1u32..24, seed in any::<u64>()) {
            let img = image_from(w, h, seed);
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let params = AugmentSettings::none().random_params(w, h, &mut rng);
            prop_assert_eq!(params, TransformParams::default());
            for fill in [Fill::Nearest, Fill::Constant(9.0), Fill::Reflect, Fill::Wrap] {
                prop_assert_eq!(&apply_transform(&img, &params, fill), &img);
            }
        }

        #[test]
        fn flipping_twice_is_the_identity(
            w in 1u32..24, h in 1u32..24, seed in any::<u64>(), horizontal in any::<bool>()
        ) {
            let img = image_from(w, h, seed);
            let flip = TransformParams {
                flip_horizontal: horizontal,
                flip_vertical: !horizontal,
                ..TransformParams::default()
            };
            let once = apply_transform(&img, &flip, Fill::Nearest);
            let twice = apply_transform(&once, &flip, Fill::Nearest);
            prop_assert_eq!(twice, img);
        }

        #[test]
        fn an_integer_shift_moves_a_known_pixel(
            w in 2u32..30, h in 2u32..30, r in 0u32..30, c in 0u32..30,
            dr in -5i32..=5, dc in -5i32..=5,
        ) {
            let (r, c) = (r % h, c % w);
            let mut img = RgbImage::new(w, h);
            img.put_pixel(c, r, ::image::Rgb([200, 100, 50]));
            // Output (r, c) samples input (r + ty, c + tx): the pixel moves by -ty, -tx.
            let p = TransformParams { tx: f64::from(dc), ty: f64::from(dr), ..TransformParams::default() };
            let out = apply_transform(&img, &p, Fill::Constant(0.0));
            let (nr, nc) = (r as i32 - dr, c as i32 - dc);
            let inside = (0..h as i32).contains(&nr) && (0..w as i32).contains(&nc);
            let lit: Vec<(u32, u32)> = out
                .enumerate_pixels()
                .filter(|(_, _, p)| p.0 != [0, 0, 0])
                .map(|(x, y, _)| (y, x))
                .collect();
            if inside {
                prop_assert_eq!(lit, vec![(nr as u32, nc as u32)]);
                prop_assert_eq!(out.get_pixel(nc as u32, nr as u32).0, [200, 100, 50]);
            } else {
                prop_assert!(lit.is_empty());
            }
        }
    }
}
