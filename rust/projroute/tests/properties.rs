//! Invariants as properties (proptest), on the public API: routing weights are a top-k
//! distribution; permuting the clusters in a file leaves outputs unchanged; a batch
//! projects as its rows one by one; a model file survives to_bytes/from_bytes whole.
//! The Python suite checks the same for every kind (tests/test_properties.py).

use std::collections::BTreeMap;

use ndarray::Array2;
use projroute::{route, ModelFile, Projector, RoutingParams, Tensor};
use proptest::prelude::*;

/// A federated model file (K clusters, d dimensions) from `values`, cycled; `perm`
/// reorders its clusters in the file.
fn federated(k: usize, d: usize, top_k: usize, values: &[f32], perm: &[usize], dtype: &str) -> ModelFile {
    let at = |i: usize| values[i % values.len()];
    // Distinct centroids (the sine term), so that no two clusters tie in a top-k cut.
    let centroid = move |c: usize, j: usize| at(c * d + j) + ((c * d + j) as f32 * 0.754_877).sin();
    let centroids: Vec<f32> = perm.iter().flat_map(|&c| (0..d).map(move |j| centroid(c, j))).collect();
    let w: Vec<f32> = perm.iter().flat_map(|&c| (0..d * d).map(move |j| at(7 + c * d * d + j))).collect();
    let tensors = BTreeMap::from([
        ("centroids".to_string(), Tensor::new(vec![k, d], centroids).unwrap()),
        ("W".to_string(), Tensor::new(vec![k, d, d], w).unwrap()),
    ]);
    let config = format!(
        r#"{{"format":"projroute","version":1,"kind":"federated","dim_in":{d},"dim_out":{d},"n_clusters":{k},"temperature":0.3,"top_k":{top_k},"weights_dtype":"{dtype}"}}"#
    );
    ModelFile::from_parts(&config, tensors, BTreeMap::new()).unwrap()
}

fn close(a: &Array2<f32>, b: &Array2<f32>) -> bool {
    a.shape() == b.shape() && a.iter().zip(b.iter()).all(|(x, y)| (x - y).abs() <= 1e-5 + 1e-4 * y.abs())
}

proptest! {
    #[test]
    fn routing_weights_are_a_top_k_distribution(
        scores in proptest::collection::vec(-1.0f32..1.0, 1..60),
        k in 1usize..10,
        top_k_frac in 0.0f32..1.0,
        coverage in proptest::option::of(0.05f32..1.0),
        t in 0.02f32..2.0,
    ) {
        let b = scores.len().div_ceil(k);
        let s = Array2::from_shape_fn((b, k), |(i, j)| scores[(i * k + j) % scores.len()]);
        let top_k = ((top_k_frac * k as f32).round() as usize).clamp(1, k);
        let r = route(s.view(), &RoutingParams { temperature: t, top_k, coverage }).unwrap();
        for i in 0..b {
            let (clusters, weights) = r.row(i);
            prop_assert!(!clusters.is_empty() && clusters.len() <= top_k);
            prop_assert!(weights.iter().all(|w| *w >= 0.0));
            prop_assert!((weights.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            let kept_min = clusters.iter().map(|&c| s[[i, c as usize]]).fold(f32::INFINITY, f32::min);
            for c in 0..k as u32 {
                if !clusters.contains(&c) {
                    prop_assert!(s[[i, c as usize]] <= kept_min);
                }
            }
        }
    }

    #[test]
    fn cluster_order_and_batching_leave_outputs_unchanged(
        values in proptest::collection::vec(-1.0f32..1.0, 16..200),
        k in 1usize..7,
        d in 2usize..9,
        b in 1usize..40,
        seed in any::<u64>(),
    ) {
        let mut perm: Vec<usize> = (0..k).collect();
        let mut state = seed;
        for i in (1..k).rev() {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            perm.swap(i, (state >> 33) as usize % (i + 1));
        }
        let identity: Vec<usize> = (0..k).collect();
        let top_k = k.div_ceil(2);
        let model = Projector::from_model(federated(k, d, top_k, &values, &identity, "float32")).unwrap();
        let shuffled = Projector::from_model(federated(k, d, top_k, &values, &perm, "float32")).unwrap();
        let x = Array2::from_shape_fn((b, d), |(i, j)| values[(3 * i + 5 * j + 1) % values.len()]);
        let out = model.project(x.view()).unwrap();
        prop_assert!(close(&shuffled.project(x.view()).unwrap(), &out));
        for i in 0..b {
            let row = model.project(x.slice(ndarray::s![i..i + 1, ..])).unwrap();
            prop_assert!(close(&row, &out.slice(ndarray::s![i..i + 1, ..]).to_owned()));
        }
    }

    #[test]
    fn a_model_file_survives_bytes_whole(
        values in proptest::collection::vec(-10.0f32..10.0, 16..200),
        k in 1usize..5,
        d in 1usize..6,
        dtype in prop_oneof![Just("float32"), Just("float16"), Just("bfloat16")],
    ) {
        let perm: Vec<usize> = (0..k).collect();
        let file = federated(k, d, 1, &values, &perm, dtype);
        let back = ModelFile::from_bytes(&file.to_bytes().unwrap()).unwrap();
        prop_assert_eq!(back, file);
    }
}
