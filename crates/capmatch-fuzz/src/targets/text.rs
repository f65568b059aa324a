//! Texts: any bytes (as UTF-8, lossily), huge ones included, through CLIP's tokenizer and
//! text tower (the tiny fixture CLIP), as a text query or a caption is.

use std::sync::OnceLock;

use capmatch_core::embedder::ClipEmbedder;
use capmatch_core::DType;

use crate::{repo_root, Target};

#[derive(Default)]
pub struct Text {
    clip: OnceLock<ClipEmbedder>,
}

impl Text {
    fn clip(&self) -> anyhow::Result<&ClipEmbedder> {
        if let Some(c) = self.clip.get() {
            return Ok(c);
        }
        let loaded = ClipEmbedder::load(&repo_root().join("fixtures/clip/tiny-quickgelu-p32"), DType::F32)?;
        Ok(self.clip.get_or_init(|| loaded))
    }
}

impl Target for Text {
    fn name(&self) -> &'static str {
        "text"
    }

    fn seeds(&self) -> anyhow::Result<Vec<Vec<u8>>> {
        let texts = [
            "a drawing of a cat",
            "a picture of a red apple on a white plate",
            "",
            " ",
            "ÉCOLE d'été — naïve café",
            "猫の絵",
            "مرحبا بالعالم",
            "🍋🍇🍍 emoji 👩‍👩‍👧‍👦",
            "\u{0}\u{1}\u{7f}\u{200b}\u{feff}",
            "<|startoftext|><|endoftext|>",
            "a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a",
        ];
        Ok(texts.iter().map(|t| t.as_bytes().to_vec()).collect())
    }

    fn run(&self, input: &[u8]) -> anyhow::Result<()> {
        let clip = self.clip()?;
        let text = String::from_utf8_lossy(input);
        let ids = clip.tokenize(&text)?;
        anyhow::ensure!(ids.len() <= clip.max_text_len(), "{} tokens for at most {}", ids.len(), clip.max_text_len());
        let vectors = clip.embed_texts(&[&text, "a photo"])?;
        anyhow::ensure!(vectors[0].iter().all(|v| v.is_finite()), "non-finite text vector");
        Ok(())
    }
}
