//! The retrieval modes and what each one scores.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How a query is compared with the gallery. The names are the ones the CLI, the server
/// and the evaluation report use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// The query vector against the gallery's caption vectors, an image scoring by its best
    /// caption: Caption-Matching (for an image query, the paper's method).
    Caption,
    /// The query vector against the gallery's image vectors: the CLIP baseline.
    Image,
    /// `W × caption score + (1 − W) × image score` (see [`fuse`]).
    Fused,
    /// A text query against the gallery's image vectors (text-to-image search).
    Text,
    /// The query's own captions against the gallery's captions, best pair of captions
    /// (an image query is captioned first).
    CaptionText,
}

impl Mode {
    pub const ALL: [Mode; 5] = [Mode::Caption, Mode::Image, Mode::Fused, Mode::Text, Mode::CaptionText];

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Caption => "caption",
            Mode::Image => "image",
            Mode::Fused => "fused",
            Mode::Text => "text",
            Mode::CaptionText => "caption-text",
        }
    }

    /// What of the gallery this mode scores against; `caption_weight` is used by `fused`.
    pub fn target(self, caption_weight: f32) -> Target {
        match self {
            Mode::Caption | Mode::CaptionText => Target::Captions,
            Mode::Image | Mode::Text => Target::Image,
            Mode::Fused => Target::Fused { caption_weight },
        }
    }

    /// Whether the query is represented by its captions' vectors rather than its own vector.
    pub fn queries_with_captions(self) -> bool {
        self == Mode::CaptionText
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown mode {0:?} (expected one of: caption, image, fused, text, caption-text)")]
pub struct UnknownMode(pub String);

impl FromStr for Mode {
    type Err = UnknownMode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "caption" => Ok(Mode::Caption),
            "image" => Ok(Mode::Image),
            "fused" => Ok(Mode::Fused),
            "text" => Ok(Mode::Text),
            "caption-text" | "captiontext" => Ok(Mode::CaptionText),
            _ => Err(UnknownMode(s.into())),
        }
    }
}

/// What of a gallery image a query vector is scored against.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// The image's caption vectors; the image scores by its best caption, and an image
    /// without captions scores −∞.
    Captions,
    /// The image's own vector.
    Image,
    /// Both, combined by [`fuse`].
    Fused { caption_weight: f32 },
}

impl Target {
    pub fn needs_captions(self) -> bool {
        match self {
            Target::Captions => true,
            Target::Image => false,
            Target::Fused { caption_weight } => caption_weight != 0.0,
        }
    }

    pub fn needs_images(self) -> bool {
        match self {
            Target::Captions => false,
            Target::Image => true,
            Target::Fused { caption_weight } => caption_weight != 1.0,
        }
    }

    /// The score of an image from its component scores.
    #[inline]
    pub fn combine(self, caption: f32, image: f32) -> f32 {
        match self {
            Target::Captions => caption,
            Target::Image => image,
            Target::Fused { caption_weight } => fuse(caption_weight, caption, image),
        }
    }
}

/// The fused score `w × caption + (1 − w) × image`.
///
/// A component whose weight is zero does not take part, rather than contributing
/// `0 × score`: an image without captions (caption score −∞) ranks by its image score at
/// `w = 0`, where the plain formula would give `0 × −∞ = NaN`.
#[inline]
pub fn fuse(w: f32, caption: f32, image: f32) -> f32 {
    if w == 0.0 {
        image
    } else if w == 1.0 {
        caption
    } else {
        w * caption + (1.0 - w) * image
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_text_and_json() {
        for m in Mode::ALL {
            assert_eq!(m.as_str().parse::<Mode>().unwrap(), m);
            assert_eq!(serde_json::to_string(&m).unwrap(), format!("\"{m}\""));
        }
        assert_eq!("Caption_Text".parse::<Mode>().unwrap(), Mode::CaptionText);
        assert!("pixels".parse::<Mode>().is_err());
    }

    #[test]
    fn fused_with_a_zero_weight_ignores_the_missing_component() {
        assert_eq!(fuse(0.0, f32::NEG_INFINITY, 0.25), 0.25);
        assert_eq!(fuse(1.0, 0.5, f32::NEG_INFINITY), 0.5);
        assert_eq!(fuse(0.5, 0.5, 0.25), 0.375);
        assert_eq!(fuse(0.5, f32::NEG_INFINITY, 0.25), f32::NEG_INFINITY);
        assert!(!Target::Fused { caption_weight: 0.0 }.needs_captions());
        assert!(!Target::Fused { caption_weight: 1.0 }.needs_images());
    }

    #[test]
    fn modes_name_their_targets() {
        assert_eq!(Mode::Caption.target(0.3), Target::Captions);
        assert_eq!(Mode::Text.target(0.3), Target::Image);
        assert_eq!(Mode::Fused.target(0.3), Target::Fused { caption_weight: 0.3 });
        assert!(Mode::CaptionText.queries_with_captions());
    }
}
