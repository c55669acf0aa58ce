//! Prototype regression with local experts (PRLE): a projection head maps pair features
//! to a unit value space, a router weighs K prototypes there, and K linear experts
//! predict a score each; the prediction is their routing-weighted mix.
//!
//! `z = normalise(head(x))`, `ŷ = Σ_k w_k(z) (e_k · z + b_k)`. Heads: `linear`
//! (`out(x)`), `mlp` (`out(relu(hidden(x)))`), `residual_mlp` (`skip(x) +
//! out(relu(hidden(x)))`), `rff` (`out(√(2/m) cos(hidden(x)))`). Routers: `knn` and
//! `softmax` are the shared centroid [`Router`] over the prototypes (cosines over `T`,
//! top-k); `radius` keeps the prototypes within `radius` (else the nearest); `mlp` routes
//! by the top-k logits of a small MLP on `z`.

use std::collections::BTreeMap;

use ndarray::{Array2, ArrayView1, ArrayView2, Axis};

use crate::error::{format_err, invalid, Error, Result};
use crate::format::{ModelFile, PrleConfig, Tensor};
use crate::linalg;
use crate::model::{names, Model};
use crate::packed::{on_this_thread, PackedMatrix};
use crate::routing::{self, Router, Routing, RoutingParams};

/// The activation after a [`Layer`].
#[derive(Clone, Copy, Debug, PartialEq)]
enum Act {
    Identity,
    Relu,
    /// Random Fourier features: `√(2/m) cos(a)` over the layer's m outputs.
    Cos,
}

/// `act(x @ Wᵀ + b)` of a PyTorch `nn.Linear` (`weight` (out, in)), packed.
#[derive(Clone, Debug)]
struct Layer {
    w: PackedMatrix,
    b: Vec<f32>,
    act: Act,
}

impl Layer {
    /// The layer `{name}.weight` (out, in) and `{name}.bias` (out,) of `m`, if present;
    /// `inputs` is the expected input width.
    fn read(m: &ModelFile, name: &str, inputs: Option<usize>, act: Act) -> Result<Option<Self>> {
        let (wn, bn) = (format!("{name}.weight"), format!("{name}.bias"));
        let Some(w) = m.tensors.get(&wn) else {
            return match m.tensors.contains_key(&bn) {
                true => format_err(format!("tensor `{bn}` without `{wn}`")),
                false => Ok(None),
            };
        };
        let w = w.view2(&wn)?;
        let b = m.tensor(&bn)?.view1(&bn)?;
        if b.len() != w.nrows() || w.nrows() == 0 || inputs.is_some_and(|i| i != w.ncols()) {
            return format_err(format!(
                "`{wn}` {:?} and `{bn}` ({}) do not fit each other or an input of {}",
                w.shape(),
                b.len(),
                inputs.map_or("any width".to_string(), |i| i.to_string())
            ));
        }
        Ok(Some(Layer { w: PackedMatrix::pack(w.t()), b: b.to_vec(), act }))
    }

    fn inputs(&self) -> usize {
        self.w.rows()
    }

    fn outputs(&self) -> usize {
        self.w.cols()
    }

    /// `x` (B, in) -> (B, out).
    fn forward(&self, x: ArrayView2<f32>) -> Array2<f32> {
        let scale = (2.0 / self.outputs() as f32).sqrt();
        // One loop per activation, so that each vectorises.
        self.w.matmul_then(x, |_, row| {
            let biased = row.iter_mut().zip(&self.b);
            match self.act {
                Act::Identity => biased.for_each(|(v, b)| *v += b),
                Act::Relu => biased.for_each(|(v, b)| *v = (*v + b).max(0.0)),
                Act::Cos => biased.for_each(|(v, b)| *v = scale * (*v + b).cos()),
            }
        })
    }
}

/// How a value embedding is routed over the prototypes.
#[derive(Clone, Debug)]
enum Routes {
    /// `knn` and `softmax`: the shared centroid router over the prototypes.
    Nearest(Router),
    /// All prototypes with cosine at least `min_cos` (else the nearest), softmax of `cos/T`.
    Radius { router: Router, min_cos: f32 },
    /// Top-k softmax of an MLP's logits.
    Mlp { hidden: Layer, out: Layer, top_k: usize },
}

/// A PRLE regressor, served: `(B, D_in)` pair features to `(B, 1)` scores.
#[derive(Clone, Debug)]
pub struct Prle {
    hidden: Option<Layer>,
    skip: Option<Layer>,
    out: Layer,
    routes: Routes,
    /// Expert weights transposed (dim, K), packed.
    experts: PackedMatrix,
    expert_bias: Vec<f32>,
    /// The tensors as read, for export.
    given: BTreeMap<String, Tensor>,
}

/// Rows per task of a batch (see [`Prle::predict`]): at least this many (a smaller
/// batch is one task, run on the calling thread) ...
const MIN_TASK: usize = 16;
/// ... and at most this many, so that a task's intermediates stay in its core's L2.
const MAX_TASK: usize = 64;

/// Tensor names a `prle` file may hold.
const TENSORS: [&str; 13] = [
    "head.hidden.weight",
    "head.hidden.bias",
    "head.skip.weight",
    "head.skip.bias",
    "head.out.weight",
    "head.out.bias",
    "prototypes",
    "experts.weight",
    "experts.bias",
    "router.hidden.weight",
    "router.hidden.bias",
    "router.out.weight",
    "router.out.bias",
];

impl Prle {
    pub(crate) fn from_model(m: &ModelFile) -> Result<Self> {
        let c = &m.config;
        let cfg: &PrleConfig =
            c.prle.as_ref().ok_or_else(|| Error::Format("a `prle` config needs a `prle` object".into()))?;
        let missing = |layer: &str| Error::Format(format!("a `{}` head needs `head.{layer}.*`", cfg.head));
        let hidden_act = match cfg.head.as_str() {
            "rff" => Act::Cos,
            _ => Act::Relu,
        };
        let hidden = Layer::read(m, "head.hidden", Some(c.dim_in), hidden_act)?;
        let skip = Layer::read(m, "head.skip", Some(c.dim_in), Act::Identity)?;
        let out_inputs = hidden.as_ref().map_or(c.dim_in, Layer::outputs);
        let out = Layer::read(m, "head.out", Some(out_inputs), Act::Identity)?.ok_or_else(|| missing("out"))?;
        let (needs_hidden, needs_skip) = match cfg.head.as_str() {
            "linear" => (false, false),
            "mlp" | "rff" => (true, false),
            "residual_mlp" => (true, true),
            other => return format_err(format!("unknown prle head {other:?} (linear, mlp, residual_mlp, rff)")),
        };
        if needs_hidden != hidden.is_some() || needs_skip != skip.is_some() {
            return format_err(format!(
                "a `{}` head takes {}`head.out`",
                cfg.head,
                match (needs_hidden, needs_skip) {
                    (true, true) => "`head.hidden`, `head.skip` and ",
                    (true, false) => "`head.hidden` and ",
                    _ => "only ",
                }
            ));
        }
        if let Some(s) = &skip {
            if s.outputs() != out.outputs() {
                return format_err("`head.skip` and `head.out` differ in output width");
            }
        }
        let dim = out.outputs();
        let prototypes = m.tensor("prototypes")?.view2("prototypes")?;
        let experts = m.tensor("experts.weight")?.view2("experts.weight")?;
        let expert_bias = m.tensor("experts.bias")?.view1("experts.bias")?;
        let k = prototypes.nrows();
        if prototypes.ncols() != dim || experts.dim() != (k, dim) || expert_bias.len() != k {
            return format_err(format!(
                "prototypes {:?}, experts.weight {:?} and experts.bias ({}) must be (K, {dim}), (K, {dim}), (K,)",
                prototypes.shape(),
                experts.shape(),
                expert_bias.len()
            ));
        }
        let params = RoutingParams::from_config(c)?;
        let router = || Router::new(prototypes, params);
        let routes = match cfg.router.as_str() {
            "knn" | "softmax" => Routes::Nearest(router()?),
            "radius" => {
                if !(cfg.radius.is_finite() && cfg.radius > 0.0) {
                    return format_err(format!("prle radius must be > 0, got {}", cfg.radius));
                }
                Routes::Radius { router: router()?, min_cos: 1.0 - cfg.radius * cfg.radius / 2.0 }
            }
            "mlp" => {
                let need = |l: Option<Layer>, n: &str| {
                    l.ok_or_else(|| Error::Format(format!("an `mlp` router needs `{n}.*`")))
                };
                let hidden = need(Layer::read(m, "router.hidden", Some(dim), Act::Relu)?, "router.hidden")?;
                let out = need(Layer::read(m, "router.out", Some(hidden.outputs()), Act::Identity)?, "router.out")?;
                if out.outputs() != k {
                    return format_err(format!("`router.out` has {} outputs for {k} prototypes", out.outputs()));
                }
                Routes::Mlp { hidden, out, top_k: params.top_k }
            }
            other => return format_err(format!("unknown prle router {other:?} (knn, radius, softmax, mlp)")),
        };
        if !matches!(routes, Routes::Mlp { .. })
            && (m.tensors.contains_key("router.hidden.weight") || m.tensors.contains_key("router.out.weight"))
        {
            return format_err(format!("a `{}` router takes no `router.*` tensors", cfg.router));
        }
        let given = TENSORS.iter().filter_map(|n| m.tensors.get(*n).map(|t| (n.to_string(), t.clone()))).collect();
        Ok(Prle {
            hidden,
            skip,
            out,
            routes,
            experts: PackedMatrix::pack(experts.t()),
            expert_bias: expert_bias.to_vec(),
            given,
        })
    }

    /// Input (pair feature) dimension.
    pub fn dim_in(&self) -> usize {
        self.hidden.as_ref().map_or(self.out.inputs(), Layer::inputs)
    }

    /// Number of prototypes K.
    pub fn n_prototypes(&self) -> usize {
        self.expert_bias.len()
    }

    /// Unit value embeddings (B, dim) of features `x` (B, D_in); validates the batch.
    pub fn embed(&self, x: ArrayView2<f32>) -> Result<Array2<f32>> {
        self.embed_rows(x, 0)
    }

    /// [`embed`](Self::embed) of rows `first..first + B` of a batch (errors name rows by
    /// their place in it).
    fn embed_rows(&self, x: ArrayView2<f32>, first: usize) -> Result<Array2<f32>> {
        linalg::check_batch(x, self.dim_in(), "features")?;
        self.embed_from(x, self.first_layer(x), first)
    }

    /// The head's first layer on `x`: the hidden layer's activations, or the output
    /// layer's when the head is linear.
    fn first_layer(&self, x: ArrayView2<f32>) -> Array2<f32> {
        self.hidden.as_ref().unwrap_or(&self.out).forward(x)
    }

    /// The rest of [`embed_rows`](Self::embed_rows), given `h`, the
    /// [`first_layer`](Self::first_layer) on `x`.
    fn embed_from(&self, x: ArrayView2<f32>, h: Array2<f32>, first: usize) -> Result<Array2<f32>> {
        let mut z = match &self.hidden {
            Some(_) => self.out.forward(h.view()),
            None => h,
        };
        if let Some(s) = &self.skip {
            z += &s.forward(x);
        }
        for (i, mut row) in z.axis_iter_mut(Axis(0)).enumerate() {
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            if !(norm > 0.0 && norm.is_finite()) {
                let i = first + i;
                return invalid(format!("features row {i} map to a zero value embedding; routing is undefined"));
            }
            row.mapv_inplace(|v| v / norm);
        }
        Ok(z)
    }

    /// Routing weights over the prototypes of features `x` (B, D_in).
    pub fn route(&self, x: ArrayView2<f32>) -> Result<Routing> {
        self.route_embedded(self.embed(x)?.view())
    }

    fn route_embedded(&self, z: ArrayView2<f32>) -> Result<Routing> {
        match &self.routes {
            Routes::Nearest(router) => router.route(z),
            Routes::Radius { router, min_cos } => {
                Ok(radius_routing(router.scores(z)?.view(), *min_cos, router.params().temperature))
            }
            Routes::Mlp { hidden, out, top_k } => {
                let logits = out.forward(hidden.forward(z).view());
                routing::route(logits.view(), &RoutingParams { temperature: 1.0, top_k: *top_k, coverage: None })
            }
        }
    }

    /// Predicted scores (B, 1) of features `x` (B, D_in).
    ///
    /// The batch is split into tasks of rows, each running the whole network on one
    /// thread of the [`team`](crate::team) (the caller and its helpers): one hand-off per
    /// call instead of one per step, and each task's activations stay in cache between
    /// the layers. A batch of at most [`MIN_TASK`] rows runs on the calling thread, but
    /// for the head's first layer: reading its weights is most of such a call, so the
    /// team shares that product out by columns. A bad batch reports its first bad row.
    pub fn predict(&self, x: ArrayView2<f32>) -> Result<Array2<f32>> {
        let threads = rayon::current_num_threads().max(1);
        let rows = x.nrows().div_ceil(2 * threads).clamp(MIN_TASK, MAX_TASK);
        if x.nrows() <= rows {
            on_this_thread(|| linalg::check_batch(x, self.dim_in(), "features"))?;
            let h = self.first_layer(x);
            return on_this_thread(|| self.predict_embedded(self.embed_from(x, h, 0)?));
        }
        crate::team::map_rows(x, rows, |x, first| self.predict_embedded(self.embed_rows(x, first)?))
    }

    /// Predictions (B, 1) of unit value embeddings `z` (B, dim).
    fn predict_embedded(&self, z: Array2<f32>) -> Result<Array2<f32>> {
        let local = self.experts.matmul_then(z.view(), |_, row| {
            row.iter_mut().zip(&self.expert_bias).for_each(|(v, b)| *v += b);
        });
        if let Routes::Nearest(router) = &self.routes {
            if router.params().is_dense(self.n_prototypes()) {
                // A softmax over every prototype: no selection, no ordering.
                let logits = router.unit_logits(z.view());
                let mix = |(l, y): (ArrayView1<f32>, ArrayView1<f32>)| {
                    let max = l.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                    let (mut mix, mut total) = (0.0f32, 0.0f32);
                    for (&v, &y) in l.iter().zip(y) {
                        let w = (v - max).exp();
                        (mix, total) = (mix + w * y, total + w);
                    }
                    mix / total
                };
                let y = logits.axis_iter(Axis(0)).zip(local.axis_iter(Axis(0))).map(mix).collect();
                return Ok(Array2::from_shape_vec((z.nrows(), 1), y).expect("one score per row"));
            }
        }
        let r = self.route_embedded(z.view())?;
        Ok(Array2::from_shape_fn((z.nrows(), 1), |(i, _)| {
            let (c, w) = r.row(i);
            c.iter().zip(w).map(|(&c, &w)| w * local[[i, c as usize]]).sum()
        }))
    }
}

/// Radius routing of cosine scores (B, K): per row the prototypes with score at least
/// `min_cos`, or the best one when none is, weighted by a softmax of `score / t`.
fn radius_routing(scores: ArrayView2<f32>, min_cos: f32, t: f32) -> Routing {
    let mut r = Routing { offsets: vec![0], clusters: Vec::new(), weights: Vec::new() };
    for row in scores.axis_iter(Axis(0)) {
        let best = (0..row.len()).fold(0, |b, j| if row[j] > row[b] { j } else { b });
        let mut keep: Vec<u32> = (0..row.len() as u32).filter(|&j| row[j as usize] >= min_cos).collect();
        if keep.is_empty() {
            keep.push(best as u32);
        }
        keep.sort_by(|a, b| row[*b as usize].total_cmp(&row[*a as usize]).then(a.cmp(b)));
        let max = row[keep[0] as usize];
        let e: Vec<f32> = keep.iter().map(|&j| ((row[j as usize] - max) / t).exp()).collect();
        let sum: f32 = e.iter().sum();
        r.weights.extend(e.iter().map(|v| v / sum));
        r.clusters.extend(keep);
        r.offsets.push(r.clusters.len());
    }
    r
}

impl Model for Prle {
    fn kind(&self) -> &'static str {
        "prle"
    }

    fn dim_in(&self) -> usize {
        Prle::dim_in(self)
    }

    fn dim_out(&self) -> usize {
        1
    }

    fn n_clusters(&self) -> Option<usize> {
        Some(self.n_prototypes())
    }

    fn project(&self, x: ArrayView2<f32>) -> Result<Array2<f32>> {
        self.predict(x)
    }

    fn route(&self, x: ArrayView2<f32>) -> Result<Option<Routing>> {
        Prle::route(self, x).map(Some)
    }

    fn tensor_names(&self) -> Vec<String> {
        names(&TENSORS)
    }

    fn tensors(&self) -> BTreeMap<String, Tensor> {
        self.given.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Projector;
    use ndarray::array;

    fn t(shape: &[usize], data: &[f32]) -> Tensor {
        Tensor::new(shape.to_vec(), data.to_vec()).unwrap()
    }

    /// A linear head (3 -> 2), two prototypes on the axes and experts `y = 1 + z₀`,
    /// `y = 2 + z₁`, with `router` and `top_k`.
    fn model(router: &str, top_k: usize, extra: &[(&str, Tensor)]) -> Result<Projector> {
        let config = format!(
            r#"{{"format":"projroute","version":1,"kind":"prle","dim_in":3,"dim_out":1,"n_clusters":2,
            "temperature":0.5,"top_k":{top_k},"prle":{{"head":"linear","router":"{router}","radius":0.5}}}}"#
        );
        let mut tensors: BTreeMap<String, Tensor> = [
            ("head.out.weight", t(&[2, 3], &[1.0, 0.0, 0.0, 0.0, 1.0, 0.0])),
            ("head.out.bias", t(&[2], &[0.0, 0.0])),
            ("prototypes", t(&[2, 2], &[1.0, 0.0, 0.0, 1.0])),
            ("experts.weight", t(&[2, 2], &[1.0, 0.0, 0.0, 1.0])),
            ("experts.bias", t(&[2], &[1.0, 2.0])),
        ]
        .into_iter()
        .map(|(n, t)| (n.to_string(), t))
        .collect();
        tensors.extend(extra.iter().map(|(n, t)| (n.to_string(), t.clone())));
        Projector::from_model(ModelFile::from_parts(&config, tensors, BTreeMap::new())?)
    }

    #[test]
    fn predicts_the_routed_mix_of_experts() {
        // x = (3, 4, 9) -> z = (0.6, 0.8); cosines 0.6 and 0.8; local 1.6 and 2.8.
        let x = array![[3.0f32, 4.0, 9.0]];
        let w1 = 1.0 / (1.0 + (-0.2f32 / 0.5).exp());
        let soft = w1 * 2.8 + (1.0 - w1) * 1.6;
        let p = model("softmax", 2, &[]).unwrap();
        assert!((p.project(x.view()).unwrap()[[0, 0]] - soft).abs() < 1e-5);
        // k-NN with k = 1, and a radius that holds neither prototype: the nearest alone.
        for (router, k) in [("knn", 1), ("radius", 2)] {
            let y = model(router, k, &[]).unwrap().project(x.view()).unwrap();
            assert!((y[[0, 0]] - 2.8).abs() < 1e-5, "{router}: {y}");
        }
    }

    #[test]
    fn radius_keeps_everything_within_it() {
        let s = array![[0.99f32, 0.9, 0.5], [0.1, 0.2, 0.3]];
        let r = radius_routing(s.view(), 0.85, 1.0);
        assert_eq!(r.row(0).0, &[0, 1]);
        assert_eq!(r.row(1), (&[2u32][..], &[1.0f32][..]));
    }

    #[test]
    fn bad_files_are_format_errors() {
        let err = |router: &str, extra: &[(&str, Tensor)]| model(router, 1, extra).unwrap_err().to_string();
        assert!(err("nearest", &[]).contains("unknown prle router"));
        assert!(err("mlp", &[]).contains("router.hidden"));
        let hidden = [("head.hidden.weight", t(&[1, 3], &[1.0; 3])), ("head.hidden.bias", t(&[1], &[0.0]))];
        assert!(err("knn", &hidden).contains("head.out"));
        let router = [("router.out.weight", t(&[2, 2], &[1.0; 4])), ("router.out.bias", t(&[2], &[0.0; 2]))];
        assert!(err("knn", &router).contains("takes no `router.*`"));
        assert!(err("knn", &[("head.skip.bias", t(&[2], &[0.0; 2]))]).contains("without `head.skip.weight`"));
        assert!(model("knn", 3, &[]).unwrap_err().to_string().contains("top_k"));
    }

    #[test]
    fn bad_batches_are_input_errors() {
        let p = model("knn", 1, &[]).unwrap();
        assert!(matches!(p.project(array![[1.0f32, 2.0]].view()), Err(Error::InvalidInput(_))));
        assert!(matches!(p.project(array![[1.0f32, f32::NAN, 0.0]].view()), Err(Error::InvalidInput(_))));
        let err = p.project(array![[0.0f32, 0.0, 1.0]].view()).unwrap_err().to_string();
        assert!(err.contains("row 0 map to a zero value embedding"), "{err}");
        // A batch split into tasks names the row by its place in the whole batch.
        let mut x = Array2::from_shape_fn((300, 3), |(_, j)| [3.0f32, 4.0, 9.0][j]);
        let all = p.project(x.view()).unwrap();
        assert!(all.iter().all(|&y| (y - 2.8).abs() < 1e-5), "every row is the one row");
        x.row_mut(250).assign(&array![0.0f32, 0.0, 1.0]);
        let err = p.project(x.view()).unwrap_err().to_string();
        assert!(err.contains("row 250 map to a zero value embedding"), "{err}");
        // With two bad rows in different tasks, the first of the batch, whichever thread
        // finds its row first.
        x.row_mut(40).assign(&array![0.0f32, 0.0, 1.0]);
        for _ in 0..20 {
            let err = p.project(x.view()).unwrap_err().to_string();
            assert!(err.contains("row 40 map to a zero value embedding"), "{err}");
        }
    }
}
