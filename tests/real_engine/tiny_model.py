"""Write a tiny Llama model directory that a real vLLM can serve, with no download.

Run it with the vLLM venv's python (it needs ``tokenizers``, which vLLM brings)::

    .venv-vllm/bin/python tests/real_engine/tiny_model.py OUT_DIR

What it writes (about 11 KB):

* ``config.json``: ``LlamaForCausalLM``, hidden size 256, 4 heads (head_dim 64: the
  smallest head size vLLM's CPU attention accepts; 16 starts but crashes on the first
  request), 2 layers, 512 positions, ``vocab_size`` equal to the tokenizer's.
* ``tokenizer.json``: a byte-level BPE trained in milliseconds on a few sentences.
* ``tokenizer_config.json``: special tokens and a one-line chat template.

There are no weights: the engine runs with ``--load-format dummy`` (random weights),
so the text it produces is gibberish, but every code path (tokenising, scheduling,
sampling, streaming, metrics) is the real one.

Standard library plus ``tokenizers`` only: this file does not import the project.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

BOS = "<s>"
EOS = "</s>"
UNK = "<unk>"
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
_CORPUS = [
    "hello world, this is a tiny model for testing the gateway.",
    "the quick brown fox jumps over the lazy dog.",
    "user: say something. assistant: something!",
    "SAGE routes OpenAI requests to vLLM engines on many hosts.",
    "0123456789 + - * / = ( ) [ ] { } < > ? ! . , ; : ' \"",
]


def write_tiny_model(out_dir: Path) -> Path:
    """Write the model directory (created if missing) and return it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=340,
        special_tokens=[BOS, EOS, UNK],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS * 4, trainer=trainer)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    vocab_size = tokenizer.get_vocab_size()
    bos_id = tokenizer.token_to_id(BOS)
    eos_id = tokenizer.token_to_id(EOS)

    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "head_dim": 64,
        "num_hidden_layers": 2,
        "max_position_embeddings": 512,
        "vocab_size": vocab_size,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
    }
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": UNK,
        "pad_token": EOS,
        "model_max_length": 512,
        "add_bos_token": False,
        "chat_template": CHAT_TEMPLATE,
    }
    special_tokens_map = {"bos_token": BOS, "eos_token": EOS, "unk_token": UNK, "pad_token": EOS}
    _write_json(out_dir / "config.json", config)
    _write_json(out_dir / "tokenizer_config.json", tokenizer_config)
    _write_json(out_dir / "special_tokens_map.json", special_tokens_map)
    _write_json(
        out_dir / "generation_config.json", {"bos_token_id": bos_id, "eos_token_id": eos_id}
    )
    return out_dir


def _write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: tiny_model.py OUT_DIR", file=sys.stderr)
        return 2
    out = write_tiny_model(Path(argv[0]))
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
