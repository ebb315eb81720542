//! The labelled-images arguments shared by `train` and `evaluate`.

use std::path::PathBuf;

use graft::retrain::ImageSource;

#[derive(clap::Args)]
pub struct SourceArgs {
    /// Folder with one sub-folder of images per class (nested trees work).
    image_dir: Option<PathBuf>,
    /// CSV of labelled images instead of class folders, with a header line: `path,label`
    /// or `image_id,label` (an id without extension names `<id>.<ext>`).
    #[arg(long, conflicts_with = "image_dir")]
    labels: Option<PathBuf>,
    /// Folder the CSV's paths are relative to (default: the CSV's folder).
    #[arg(long, requires = "labels")]
    images: Option<PathBuf>,
}

impl SourceArgs {
    pub fn source(&self) -> anyhow::Result<ImageSource> {
        Ok(match (&self.image_dir, &self.labels) {
            (_, Some(labels)) => {
                let csv = graft::dataset::organize::read_labels_csv(labels)?;
                let (id, label) = graft::dataset::classes::labels_csv_columns(&csv)?;
                eprintln!(
                    "{}: reading the column '{id}' as the image and '{label}' as its class",
                    labels.display()
                );
                ImageSource::Csv {
                    labels: labels.clone(),
                    images: self.images.clone(),
                }
            }
            (Some(dir), None) => {
                // Said plainly here: the folder walk would only pass on the OS error.
                graft::retrain::require_exists(dir, "this image folder")?;
                ImageSource::Folders(dir.clone())
            }
            // Checked here, not by clap, so `train --features` can stand in for both.
            (None, None) => super::values::refuse(
                "pass an image folder or --labels FILE.csv (train also takes --features)".into(),
            ),
        })
    }

    /// The image folder, if one was given.
    pub fn image_dir(&self) -> Option<&PathBuf> {
        self.image_dir.as_ref()
    }

    /// The labels CSV, if one was given.
    pub fn labels(&self) -> Option<&PathBuf> {
        self.labels.as_ref()
    }

    /// `--images`, if given.
    pub fn images(&self) -> Option<&PathBuf> {
        self.images.as_ref()
    }
}
