"""The ADL settings and readout types, without torch: the wire schema (`tools.worker.schema`)
and the client side import them from here; the engine modules (`pipeline`, `readouts`,
`steering`) compute with them and re-import them under their old names."""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, Field

from tools.corpus import CorpusSpec, SampleUnit
from tools.model_spec import Side

# The reference's identity prompts (nnterp `repeat_prompt`, src/diffing/utils/model.py).
IDENTITY_PROMPTS: tuple[str, ...] = (
    "man -> man\n1135 -> 1135\nhello -> hello\n?",
    "bear -> bear\n42 -> 42\nblue -> blue\n?",
    "921 -> 921\ntarget -> target\nanna -> anna\n?",
)
PATCHSCOPE_INTERSECTION_K = 16384
# The reference's 30 scales: 0.5..2.0 by 0.1, 3, 4, 5, 10, 20, then 20..200 by 20.
PATCHSCOPE_SCALES: tuple[float, ...] = (
    *(round(0.5 + 0.1 * i, 1) for i in range(16)), 3.0, 4.0, 5.0, 10.0,
    *(float(20 * i) for i in range(1, 11)),
)
ReadoutMethod = Literal["logit_lens", "logit_lens_suppressed", "patchscope"]
READOUT_METHODS: tuple[ReadoutMethod, ...] = get_args(ReadoutMethod)
REFERENCE_LAYER = 0.5
# A layer: a relative depth in [0, 1] (a float) or a block index (an int).
LayerSpec = float | int


class TokenScore(BaseModel):
    """One token of a readout."""

    token: str
    token_id: int
    probability: float
    z_score: float | None = None


class AdlSettings(BaseModel):
    """What to compute. Defaults: the reference toolkit's (N, positions, relative layer 0.5,
    Patchscope prompts and scales); the profiles (tools/adl/profiles.py) and the table in
    BENCHMARKS.md compare them."""

    layers: tuple[LayerSpec, ...] = (REFERENCE_LAYER,)
    n_positions: int = Field(5, ge=1, le=64)
    n_samples: int = Field(10_000, ge=1)
    batch_size: int = Field(512, ge=1)
    corpus: CorpusSpec = CorpusSpec()
    sample_unit: SampleUnit = "sentence"
    seed: int = 0
    readout_k: int = Field(100, ge=1, le=1000, description="Top tokens cached per readout.")
    patchscope_scales: tuple[float, ...] = PATCHSCOPE_SCALES
    patchscope_prompts: tuple[str, ...] = IDENTITY_PROMPTS
    patchscope_intersection_k: int = Field(PATCHSCOPE_INTERSECTION_K, ge=1)
    patchscope_k: int = Field(20, ge=1, le=200)
    random_directions: int = Field(256, ge=8)
    primary_layer: LayerSpec = Field(
        REFERENCE_LAYER, description="Layer used for steering and overviews (relative or block "
        "index); it must be one of `layers`. Default: the reference's 0.5, fixed in advance."
    )

    def difference_key_payload(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class SteeringSettings(BaseModel):
    """Settings of the strength search and of the final samples. Defaults: the reference
    toolkit's (`configs/diffing/method/activation_difference_lens.yaml`, `steering`); the
    profile table in BENCHMARKS.md lists them next to the quick profile's."""

    max_strength: float = Field(
        100.0, gt=0, description="Upper end of the first prompt's search, in mean residual norms."
    )
    search_steps: int = Field(
        12, ge=1, description="Bisections for the first search prompt; the other search prompts "
        "get search_steps // 2 (at least 1) on [0, 2 x the first prompt's strength]."
    )
    samples_per_strength: int = Field(10, ge=1)
    coherence_threshold: float = Field(0.75, gt=0, le=1)
    search_max_new_tokens: int = Field(128, ge=1, le=1024)
    search_temperature: float = Field(1.2, ge=0)
    fallback_temperatures: list[Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: [1.1, 1.0], max_length=8, description="The unsteered control "
        "(not in the reference): tried in order when fewer than coherence_threshold of the "
        "model's own unsteered samples pass at search_temperature; the search and the final "
        "samples then use the first that passes (1.0: the offline grader's calibration).")
    search_prompt_set: str = Field("steering_search_prompts.yaml", description="File in prompts/.")
    final_prompt_set: str = Field("steering_final_prompts.yaml", description="File in prompts/.")
    final_samples: int = Field(5, ge=1, description="Steered and unsteered samples per prompt.")
    final_max_new_tokens: int = Field(512, ge=1, le=1024)
    final_temperature: float = Field(1.1, ge=0)
    max_batch_size: int = Field(32, ge=1, description="Rows per generate call.")
    side: Side = "finetuned"
    seed: int = 0
