//! Deterministic "formula weights": stand-in parameters that Python and Rust compute bit for
//! bit alike, so a network can be checked against its PyTorch reference where the real
//! checkpoint cannot be fetched (Inception V3 in the golden tests).
//!
//! `scripts/golden/make_golden.py` is the other half; both define, for a float tensor with
//! state_dict key `key`, shape `shape` and row-major flat index `i`:
//!
//! ```text
//! h    = fnv1a_32(utf8(key))
//! u(i) = (h + 2654435761 * i * i) mod 2^32          exact integer arithmetic
//! t(i) = sin(2 * pi * (u(i) / 2^32))                 f64
//! *.running_var               -> 1.0 + 0.5 * t * t
//! *.running_mean              -> 0.1 * t
//! *.bias                      -> 0.1 * t
//! ndim >= 2 (conv, linear)    -> t * sqrt(GAIN / fan_in),  fan_in = numel / shape[0]
//! any other (BatchNorm gamma) -> 1.0 + 0.1 * t
//! ```
//!
//! with [`GAIN`] = 5, the rules tried in that order, each value computed in f64 and rounded
//! to f32 at the end. `*.num_batches_tracked` (an integer counter) is not generated.
//!
//! The phase is quadratic in `i` because a linear one (`sin(a * i + b)`) makes every weight
//! matrix rank 2 and the network forgets its input; the chirp gives each row its own
//! frequency. GAIN = 5 keeps the activation scale steady through Inception V3's ~95 layers:
//! a conv-BN-ReLU multiplies the mean square by about `GAIN * E[t^2] / E[var] / 2 = GAIN / 5`.
//!
//! Python's `math.sin` and Rust's `f64::sin` both call the C library's `sin`; on a platform
//! whose libm differs from glibc by 1 ulp in f64 the f32 result almost never changes, and
//! never by more than 1 f32 ulp, far below any network-level tolerance.

/// Scale of the conv and linear weights (see the module doc).
pub const GAIN: f64 = 5.0;

/// Knuth's multiplicative-hash constant, the multiplier of the quadratic phase.
const PHASE_MULTIPLIER: u64 = 2_654_435_761;

/// 32-bit FNV-1a of `bytes`.
fn fnv1a_32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |hash, &byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    })
}

/// `t(i)` of the module doc for the tensor whose key hashes to `hash`.
fn wave(hash: u32, index: usize) -> f64 {
    let i = index as u64;
    // Wrapping u64 arithmetic is exact modulo 2^64, hence modulo 2^32.
    let phase = u64::from(hash).wrapping_add(PHASE_MULTIPLIER.wrapping_mul(i).wrapping_mul(i))
        & 0xffff_ffff;
    // Same operation order as the Python script: (2 * pi) * (u / 2^32).
    (2.0 * std::f64::consts::PI * (phase as f64 / 4_294_967_296.0)).sin()
}

/// Which rule of the module doc a tensor follows.
#[derive(Clone, Copy)]
enum Rule {
    RunningVar,
    /// `running_mean` and `bias`.
    Shift,
    /// Conv and linear weights, `scale = sqrt(GAIN / fan_in)`.
    Weight {
        scale: f64,
    },
    /// BatchNorm gamma.
    Gamma,
}

impl Rule {
    fn of(key: &str, shape: &[usize], numel: usize) -> Rule {
        if key.ends_with(".running_var") {
            Rule::RunningVar
        } else if key.ends_with(".running_mean") || key.ends_with(".bias") {
            Rule::Shift
        } else if shape.len() >= 2 {
            let fan_in = (numel / shape[0]) as f64;
            Rule::Weight {
                scale: (GAIN / fan_in).sqrt(),
            }
        } else {
            Rule::Gamma
        }
    }

    /// Written in the Python script's operation order, so the f64 roundings agree.
    fn apply(self, t: f64) -> f64 {
        match self {
            Rule::RunningVar => 1.0 + 0.5 * t * t,
            Rule::Shift => 0.1 * t,
            Rule::Weight { scale } => t * scale,
            Rule::Gamma => 1.0 + 0.1 * t,
        }
    }
}

/// The formula values of the tensor `key` with `shape`, row-major, as
/// `scripts/golden/make_golden.py` makes them (see the module doc).
pub fn formula_tensor(key: &str, shape: &[usize]) -> Vec<f32> {
    let numel: usize = shape.iter().product();
    if numel == 0 {
        return Vec::new();
    }
    let hash = fnv1a_32(key.as_bytes());
    let rule = Rule::of(key, shape, numel);
    (0..numel)
        .map(|index| rule.apply(wave(hash, index)) as f32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_published_test_vectors() {
        assert_eq!(fnv1a_32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a_32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a_32(b"foobar"), 0xbf9c_f968);
    }

    /// Values printed by `scripts/golden/make_golden.py` ("formula samples"), as f32 bits.
    /// They cover every rule, and the `fc.weight` index makes `K * i * i` wrap past 2^64.
    #[test]
    fn matches_the_values_python_printed() {
        let samples: [(&str, &[usize], usize, u32); 8] = [
            ("Conv2d_1a_3x3.conv.weight", &[32, 3, 3, 3], 0, 0xbd9f_a141),
            (
                "Conv2d_1a_3x3.conv.weight",
                &[32, 3, 3, 3],
                863,
                0xbd8b_8bb8,
            ),
            ("Conv2d_1a_3x3.bn.weight", &[32], 5, 0x3f88_d885),
            ("Conv2d_1a_3x3.bn.bias", &[32], 31, 0xbd8f_2de6),
            (
                "Mixed_7c.branch_pool.bn.running_mean",
                &[192],
                100,
                0x3c77_33ab,
            ),
            (
                "Mixed_7c.branch_pool.bn.running_var",
                &[192],
                191,
                0x3f9b_2c4a,
            ),
            ("fc.weight", &[1000, 2048], 2_047_999, 0x3d49_dbf7),
            ("fc.bias", &[1000], 954, 0xbdb1_98ee),
        ];
        for (key, shape, index, bits) in samples {
            let values = formula_tensor(key, shape);
            assert_eq!(values.len(), shape.iter().product::<usize>(), "{key}");
            let expected = f32::from_bits(bits);
            // Bit-identical with glibc; 1e-7 leaves room for a libm that rounds sin's last
            // f64 bit differently (at most 1 f32 ulp, about 1e-8 at these magnitudes).
            assert!(
                (values[index] - expected).abs() <= 1e-7,
                "{key}[{index}] = {} but Python made {expected}",
                values[index]
            );
        }
    }

    #[test]
    fn rules_keep_their_ranges() {
        let var = formula_tensor("x.bn.running_var", &[64]);
        assert!(var.iter().all(|&v| (1.0..=1.5).contains(&v)));
        let gamma = formula_tensor("x.bn.weight", &[64]);
        assert!(gamma.iter().all(|&v| (0.9..=1.1).contains(&v)));
        let bias = formula_tensor("x.bn.bias", &[64]);
        assert!(bias.iter().all(|&v| v.abs() <= 0.1));
        // fan_in = 8 * 3 * 3 = 72: |w| <= sqrt(5 / 72).
        let conv = formula_tensor("x.conv.weight", &[16, 8, 3, 3]);
        let bound = (GAIN / 72.0).sqrt() as f32 + 1e-7;
        assert!(conv.iter().all(|&v| v.abs() <= bound));
        assert!(formula_tensor("empty.weight", &[0, 3]).is_empty());
    }

    /// Every float tensor of Inception V3, against the per-tensor sums the script recorded
    /// in the golden fixture: a wrong rule, key or shape anywhere changes a sum.
    #[test]
    fn every_inception_tensor_sums_as_in_python() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/golden/inception-v3.json"
        );
        let text = std::fs::read_to_string(path).unwrap_or_else(|err| {
            panic!("cannot read {path}: {err}; regenerate it with scripts/golden/make_golden.py")
        });
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        let weights = &doc["weights"];
        assert_eq!(
            weights["gain"].as_f64(),
            Some(GAIN),
            "fixture made with another GAIN"
        );
        let shapes = weights["state_dict"].as_object().unwrap();
        let sums = weights["state_dict_sums"].as_object().unwrap();
        assert_eq!(shapes.len(), 484, "Inception V3 has 484 float tensors");
        for (key, shape) in shapes {
            let shape: Vec<usize> = serde_json::from_value(shape.clone()).unwrap();
            let values = formula_tensor(key, &shape);
            let sum: f64 = values.iter().map(|&v| f64::from(v)).sum();
            let expected = sums[key].as_f64().unwrap();
            // Summation order differs (numpy sums pairwise); f64 keeps that below 1e-9 here.
            assert!(
                (sum - expected).abs() <= 1e-9 * (1.0 + expected.abs()),
                "{key}: sum {sum} but Python's is {expected}"
            );
        }
    }
}
