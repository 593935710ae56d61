//! QR codes of the URLs a wallet scans: the issuer's OpenID4VCI offers and the gateway's
//! OpenID4VP authorization requests, as SVG (to show) and PNG (to print or embed).

/// Pixels per module of the PNG, and the quiet zone around the code, in modules (the QR
/// specification asks for at least four).
const SCALE: usize = 8;
const QUIET: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum QrError {
    /// The text is longer than the largest QR code holds.
    #[error("too long for a QR code: {0}")]
    TooLong(String),
    #[error("QR code PNG: {0}")]
    Png(String),
}

/// One code in both renderings.
pub struct Qr {
    pub svg: String,
    pub png: Vec<u8>,
}

/// `text` as a QR code (error correction M: survives a smudge on a printed offer).
pub fn encode(text: &str) -> Result<Qr, QrError> {
    let code = qrcode::QrCode::with_error_correction_level(text, qrcode::EcLevel::M)
        .map_err(|e| QrError::TooLong(e.to_string()))?;
    let svg = code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(256, 256)
        .build();
    let modules = code.width();
    let side = (modules + 2 * QUIET) * SCALE;
    let mut pixels = vec![255u8; side * side];
    for (i, color) in code.to_colors().iter().enumerate() {
        if *color != qrcode::Color::Dark {
            continue;
        }
        let (mx, my) = (i % modules + QUIET, i / modules + QUIET);
        for y in my * SCALE..(my + 1) * SCALE {
            let row = y * side;
            if let Some(run) = pixels.get_mut(row + mx * SCALE..row + (mx + 1) * SCALE) {
                run.fill(0);
            }
        }
    }
    let mut png = Vec::new();
    {
        let side = u32::try_from(side).map_err(|_| QrError::TooLong(format!("{side} pixels")))?;
        let mut encoder = png::Encoder::new(&mut png, side, side);
        encoder.set_color(png::ColorType::Grayscale);
        encoder.set_depth(png::BitDepth::Eight);
        encoder
            .write_header()
            .and_then(|mut w| w.write_image_data(&pixels))
            .map_err(|e| QrError::Png(e.to_string()))?;
    }
    Ok(Qr { svg, png })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_renders_as_svg_and_png_and_an_overlong_one_is_refused() {
        let qr =
            encode("openid4vp://?client_id=x&request_uri=https%3A%2F%2Fg.example%2Fr").unwrap();
        assert!(qr.svg.contains("<svg"));
        assert!(qr.png.starts_with(b"\x89PNG\r\n\x1a\n"));
        let too_long = "x".repeat(8000);
        assert!(matches!(encode(&too_long), Err(QrError::TooLong(_))));
    }
}
