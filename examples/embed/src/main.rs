//! Your own training loop with saln as the data loader: a small CNN trained on curated
//! Fashion-MNIST batches.
//!
//! saln draws super-batches of 256 images, keeps a quarter of each (`Policy::Uniform`, which
//! needs no reference model; `Policy::Saln` works the same with `.extractor_weights(..)` once
//! `saln-pipe pretrain` has written them) and hands the kept images over as ready tensors.
//!
//! Run: `cargo run --release [-- FASHION_MNIST_DIR]` (default: $SALN_FASHION_MNIST_DIR, else
//! /usr/share/datasets/fashion-mnist, Debian's `dataset-fashion-mnist`).
use std::path::PathBuf;
use std::sync::Arc;

use saln::augment::AugmentOp;
use saln::loader::{Item, Loader};
use saln::select::Policy;
use saln::source::idx::IdxSource;
use saln::source::{MemorySource, Source};
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Kind, Reduction, Tensor};

/// Training images used (of the 60,000), and passes over them.
const IMAGES: usize = 4096;
const EPOCHS: usize = 2;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir: PathBuf = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("SALN_FASHION_MNIST_DIR").ok())
        .unwrap_or_else(|| "/usr/share/datasets/fashion-mnist".into())
        .into();
    let file = |name: &str| {
        let gz = dir.join(format!("{name}.gz"));
        if gz.exists() {
            gz
        } else {
            dir.join(name)
        }
    };

    // Your data: any Vec<Sample> (id, label, raw pixels) in a MemorySource, or your own
    // implementation of saln::source::Source. Here: the first images of Fashion-MNIST.
    let fmnist = IdxSource::open(
        &file("train-images-idx3-ubyte"),
        &file("train-labels-idx1-ubyte"),
    )?;
    let samples = (0..IMAGES)
        .map(|i| fmnist.get(i))
        .collect::<saln::Result<Vec<_>>>()?;
    let source = MemorySource::new("fashion-mnist", samples, fmnist.num_classes());

    tch::manual_seed(1); // the model's initial weights; .seed(1) below fixes saln's order
    let mut loader = Loader::builder(Arc::new(source))
        .policy(Policy::Uniform)
        .keep_ratio(0.25)
        .superbatch_size(256)
        .epochs(EPOCHS)
        .seed(1)
        .augment(vec![AugmentOp::Normalize {
            mean: vec![0.286],
            std: vec![0.353],
        }])
        .build()?;
    let info = loader.info().clone();
    let (c, _, _) = info.shape;
    println!(
        "data: {IMAGES} images of shape {:?}, {} classes, on {:?}",
        info.shape, info.classes, info.device
    );

    // The model is yours: saln only delivers the tensors.
    let vs = nn::VarStore::new(info.device);
    let p = vs.root();
    let net = nn::seq()
        .add(nn::conv2d(&p / "c1", c as i64, 16, 5, Default::default()))
        .add_fn(|x| x.relu().max_pool2d_default(2))
        .add(nn::conv2d(&p / "c2", 16, 32, 5, Default::default()))
        .add_fn(|x| x.relu().adaptive_avg_pool2d([4, 4]).flatten(1, -1))
        .add(nn::linear(
            &p / "fc",
            32 * 16,
            info.classes as i64,
            Default::default(),
        ));
    let mut opt = nn::Adam::default().build(&vs, 2e-3)?;

    let mut steps = 0;
    for item in &mut loader {
        match item? {
            Item::Batch(b) => {
                let per_sample = net.forward(&b.images).cross_entropy_loss::<Tensor>(
                    &b.labels,
                    None,
                    Reduction::None,
                    -100,
                    0.0,
                );
                let loss = per_sample.mean(Kind::Float);
                opt.backward_step(&loss);
                b.report_losses(&per_sample)?; // read by learner-aware selection policies
                steps += 1;
                let ids: Vec<String> = b.ids.iter().map(u64::to_string).collect();
                println!(
                    "step {steps} epoch {} batch {} of {} ids {} loss {:.4}",
                    b.epoch + 1,
                    b.len(),
                    b.superbatch_len,
                    ids.join(","),
                    loss.double_value(&[])
                );
            }
            Item::EpochEnd { epoch } => println!("epoch {} done after {steps} steps", epoch + 1),
        }
    }
    let report = loader.finish()?;
    println!(
        "done: {steps} steps, trained on {} of the {} images saln drew",
        report.selection.samples_kept, report.loader.samples
    );
    Ok(())
}
