"""Where a zoo's models come from: one `Source` per `ModelRef.source`, each answering the same
questions (is it here, where are its files, how many layers, what is its tokenizer, what text was
it trained on), so that nothing above the zoo asks which source a model has. The mini zoo's source
is in `glue_bench.zoo.mini.source`; `glue_bench.zoo.source_of` finds a reference's."""

from __future__ import annotations

import json
import os
from pathlib import Path

from glue_bench.zoo.refs import ModelRef, ZooError


class Source:
    """A model directory with config.json, safetensors and a tokenizer (what `local` is)."""

    def ensure(self, refs: list[ModelRef], mini_size: str) -> None:
        """Make `refs` available here (build, fetch) or fail naming the first that cannot be."""
        for ref in refs:
            if not os.path.isdir(ref.location):
                raise ZooError(f"model {ref.name!r}: directory {ref.location} does not exist")
            if not os.path.exists(os.path.join(ref.location, self.entry_file(ref))):
                raise ZooError(f"model {ref.name!r}: {self.missing_entry(ref)}")

    def entry_file(self, ref: ModelRef) -> str:
        """The file in its directory that makes it a model of this source."""
        return "config.json"

    def missing_entry(self, ref: ModelRef) -> str:
        return f"{ref.location} has no config.json (not a HF model directory)"

    def check_files(self, ref: ModelRef) -> None:
        """Config, tokenizer and weight files readable, the weights finite, before any is loaded."""
        from glue_bench.zoo.files import check_directory, check_finite_files

        try:
            check_finite_files(check_directory(Path(ref.location)))
        except (OSError, ValueError) as err:
            raise ZooError(f"model {ref.name!r}: {err}") from None

    def depth(self, ref: ModelRef, mini_size: str) -> int | None:
        """Its number of layers before it is loaded; None where only loading tells."""
        try:
            return int(json.loads((Path(ref.location) / "config.json").read_text())["num_hidden_layers"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def local_dir(self, ref: ModelRef) -> Path:
        """A directory holding its safetensors, streamed tensor by tensor by the merges."""
        return Path(ref.location)

    def load_model(self, ref: ModelRef):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(self.local_dir(ref), dtype="auto")

    def load_tokenizer(self, ref: ModelRef):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.local_dir(ref))

    def tokenizer_config(self, ref: ModelRef) -> Path | None:
        """Its tokenizer_config.json, where it declares its BOS convention (None: it has none)."""
        return Path(ref.location) / "tokenizer_config.json"

    def tokenizer_identity(self, ref: ModelRef) -> tuple:
        """Equal for two models exactly when they tokenize alike: vocabulary and special tokens."""
        tok = self.load_tokenizer(ref)
        return tuple(sorted(tok.get_vocab().items())), tok.bos_token_id, tok.eos_token_id

    def own_documents(self, ref: ModelRef, n: int, seed: int = 0) -> list[str] | None:
        """`n` documents of the data it was fine-tuned on, where the source knows them (None: unknown,
        so a router's prompts or a merge's calibration text must be given)."""
        return None


class HubSource(Source):
    """A Hugging Face hub id, resolved through the HF cache (its files are checked as it loads)."""

    def ensure(self, refs, mini_size):
        pass

    def check_files(self, ref):
        pass

    def depth(self, ref, mini_size):
        return None

    def local_dir(self, ref):
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(ref.location, allow_patterns=["*.json", "*.safetensors", "*.model",
                                                                        "tokenizer*"]))
        except Exception as exc:  # offline, gated, missing: all end the same way for the user
            raise unreachable(ref, exc) from None

    def tokenizer_config(self, ref):
        """Fetched alone (or found in the HF cache), not with the weights."""
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        try:
            return Path(hf_hub_download(ref.location, "tokenizer_config.json"))
        except EntryNotFoundError:
            return None
        except Exception as exc:  # offline, gated, missing: all end the same way for the user
            raise unreachable(ref, exc) from None


class GGUFSource(Source):
    """A GGUF file in a directory; transformers dequantizes it as it loads (its reader checks it)."""

    def entry_file(self, ref):
        return ref.gguf_file

    def missing_entry(self, ref):
        return f"GGUF file {ref.gguf_file} not found in {ref.location}"

    def check_files(self, ref):
        pass

    def depth(self, ref, mini_size):
        return None

    def local_dir(self, ref):
        raise ZooError(f"model {ref.name!r}: a GGUF file cannot be streamed tensor by tensor; "
                       "convert it to safetensors first (load_model + save_pretrained)")

    def load_model(self, ref):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(ref.location, gguf_file=ref.gguf_file)

    def load_tokenizer(self, ref):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(ref.location, gguf_file=ref.gguf_file)

    def tokenizer_config(self, ref):
        return None  # its own metadata is not read: its zoo entry says its BOS convention


def unreachable(ref: ModelRef, exc: Exception) -> ZooError:
    return ZooError(f"model {ref.name!r}: cannot get {ref.location} from the Hugging Face hub "
                    f"({type(exc).__name__}); this needs hub access, or a local copy in HF_HOME")
