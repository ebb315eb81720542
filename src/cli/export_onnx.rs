//! `graft export-onnx --backbone NAME --output model.onnx`

use std::path::PathBuf;

use anyhow::Context;

use graft::backbone::BackboneId;
use graft::engine::onnx;
use graft::weights;

use super::render::Bar;
use super::Outcome;

#[derive(clap::Args)]
pub struct Args {
    /// Backbone network.
    #[arg(long, default_value_t = BackboneId::DEFAULT.name().to_string())]
    backbone: String,
    /// Where to write the ONNX model (input `pixels` [N, 3, S, S]; outputs `features`
    /// [N, D] and `logits` [N, 1000]).
    #[arg(long, short)]
    output: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    let id: BackboneId = args.backbone.parse()?;
    let bar = Bar::new();
    let loaded = weights::ensure(id, &bar)?;
    let model = onnx::export_backbone(id, &loaded.tensors, &loaded.path.display().to_string())?;
    graft::fsx::write_atomic(&args.output, &model)
        .with_context(|| format!("writing {}", args.output.display()))?;
    println!(
        "wrote {} ({} bytes): {id}, opset 17, input `pixels` [N, 3, {s}, {s}]",
        args.output.display(),
        model.len(),
        s = id.spec().preprocess.size
    );
    Ok(Outcome::Done)
}
