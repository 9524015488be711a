//! SOP prompts (`with.prompt_file`): read at every delivery, as upstream, so an edited SOP applies
//! to the next event without a reload; YAML front matter is stripped.

use std::path::Path;

use crate::config::load::read_text;

/// The prompt text of `path`, without front matter. `None` when the file cannot be read or is
/// larger than [`MAX_FILE_BYTES`](crate::config::load::MAX_FILE_BYTES) (the delivery goes on
/// without a prompt, as upstream, and the failure is logged).
pub async fn read_prompt(path: &Path) -> Option<String> {
    let owned = path.to_path_buf();
    let text = tokio::task::spawn_blocking(move || read_text(&owned))
        .await
        .ok()?;
    match text {
        Ok(t) => Some(strip_front_matter(&t).to_owned()),
        Err(e) => {
            tracing::warn!(file = %path.display(), "cannot read SOP prompt: {e}");
            None
        }
    }
}

/// Removes a leading `---` ... `---` block (only when `---` is the very first line).
pub fn strip_front_matter(text: &str) -> &str {
    let Some(rest) = text
        .strip_prefix("---\n")
        .or_else(|| text.strip_prefix("---\r\n"))
    else {
        return text;
    };
    let mut offset = 0;
    for line in rest.split_inclusive('\n') {
        offset += line.len();
        if line.trim_end() == "---" {
            return rest[offset..].trim_start_matches(['\r', '\n']);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_only_leading_front_matter() {
        assert_eq!(
            strip_front_matter("---\ntitle: x\n---\n\nDo it.\n"),
            "Do it.\n"
        );
        assert_eq!(strip_front_matter("Do it.\n---\n"), "Do it.\n---\n");
        assert_eq!(
            strip_front_matter("---\nunterminated\n"),
            "---\nunterminated\n"
        );
    }
}
