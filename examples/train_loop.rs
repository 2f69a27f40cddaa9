//! Your own training loop, with saln as the data loader.
//!
//! saln draws super-batches of 256 Fashion-MNIST images, keeps a quarter of each
//! (`policy: uniform` here, which needs no reference model; `saln` works the same once
//! `saln-pipe pretrain` has written the reference weights), and hands the kept images to
//! this loop as ready tensors. The loop trains its own model (a small MLP) and hands the
//! per-sample losses back to saln.
//!
//! Run: `cargo run --release --example train_loop [-- FASHION_MNIST_DIR]`
use std::path::Path;

use saln::config::PipelineConfig;
use saln::loader::{Item, Loader};
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Kind, Reduction};

/// What the loop did.
pub struct Outcome {
    /// Mean loss of each optimizer step, in order.
    pub losses: Vec<f64>,
    /// Samples trained on.
    pub samples: usize,
    /// Test accuracy after the last epoch.
    pub accuracy: f64,
}

/// Trains for `epochs` on `limit` Fashion-MNIST training images found in `data`.
pub fn train(
    data: &Path,
    limit: usize,
    epochs: usize,
) -> Result<Outcome, Box<dyn std::error::Error>> {
    let yaml = format!(
        "seed: 1\n\
         source: {{ idx: {{ dir: '{}' }}, holdout: 0, limit: {limit}, test_limit: 1000 }}\n\
         augment: {{ ops: [ {{ hflip: {{ p: 0.5 }} }}, {{ normalize: {{ mean: [0.286], std: [0.353] }} }} ] }}\n\
         superbatch: {{ size: 256 }}\n\
         selection: {{ policy: uniform, keep_ratio: 0.25 }}\n\
         trainer: {{ epochs: {epochs} }}\n",
        data.display()
    );
    let cfg = PipelineConfig::from_yaml_str(&yaml, "train_loop.yaml")?;
    let mut loader = Loader::from_config(&cfg)?;

    // The model is the loop's business: saln only needs to know the image shape.
    let info = loader.info().clone();
    let (c, h, w) = info.shape;
    let vs = nn::VarStore::new(info.device);
    let root = vs.root();
    let net = nn::seq()
        .add_fn(|x| x.flatten(1, -1))
        .add(nn::linear(
            &root / "l1",
            (c * h * w) as i64,
            128,
            Default::default(),
        ))
        .add_fn(|x| x.relu())
        .add(nn::linear(
            &root / "l2",
            128,
            info.classes as i64,
            Default::default(),
        ));
    let mut opt = nn::Adam::default().build(&vs, 2e-3)?;
    let test = saln::train::eval_set(
        info.data.test.as_ref(),
        &info.augmenter,
        cfg.source.test_limit,
        cfg.source.on_error,
        info.device,
    )?;
    let (test_x, test_y) = (test.x, test.y);

    let (mut losses, mut samples, mut accuracy) = (Vec::new(), 0, 0.0);
    for item in &mut loader {
        match item? {
            Item::Batch(b) => {
                let per_sample = net.forward(&b.images).f_cross_entropy_loss::<tch::Tensor>(
                    &b.labels,
                    None,
                    Reduction::None,
                    -100,
                    0.0,
                )?;
                let loss = per_sample.f_mean(Kind::Float)?;
                opt.backward_step(&loss);
                b.report_losses(&per_sample)?; // for learner-aware selection policies
                losses.push(loss.f_double_value(&[])?);
                samples += b.len();
            }
            Item::EpochEnd { epoch } => {
                let _guard = tch::no_grad_guard();
                let pred = net.forward(&test_x).f_argmax(-1, false)?;
                accuracy = pred
                    .f_eq_tensor(&test_y)?
                    .f_to_kind(Kind::Float)?
                    .f_mean(Kind::Float)?
                    .f_double_value(&[])?;
                println!(
                    "epoch {}: {} steps, last loss {:.3}, test accuracy {:.1}%",
                    epoch + 1,
                    losses.len(),
                    losses.last().copied().unwrap_or(f64::NAN),
                    100.0 * accuracy
                );
            }
        }
    }
    let report = loader.finish()?;
    println!(
        "trained on {samples} of the {} images saln loaded, in {} steps",
        report.loader.samples, report.steps
    );
    Ok(Outcome {
        losses,
        samples,
        accuracy,
    })
}

/// `SALN_FASHION_MNIST_DIR`, else Debian's location.
fn default_data_dir() -> std::path::PathBuf {
    std::env::var("SALN_FASHION_MNIST_DIR")
        .unwrap_or_else(|_| "/usr/share/datasets/fashion-mnist".into())
        .into()
}

#[cfg_attr(test, allow(dead_code))]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .map_or_else(default_data_dir, Into::into);
    train(&dir, 8192, 2)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_loop_trains_and_its_loss_falls() {
        let o = super::train(&super::default_data_dir(), 4096, 2).unwrap();
        assert_eq!(
            o.samples,
            2 * 4096 / 4,
            "a quarter of each super-batch, two epochs"
        );
        let k = 5;
        let first: f64 = o.losses[..k].iter().sum::<f64>() / k as f64;
        let last: f64 = o.losses[o.losses.len() - k..].iter().sum::<f64>() / k as f64;
        assert!(last < 0.7 * first, "loss fell from {first:.3} to {last:.3}");
        assert!(o.accuracy > 0.6, "test accuracy {:.3}", o.accuracy);
    }
}
