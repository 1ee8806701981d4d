"""The upstream benchmark files evalsuite reads: where each comes from, its checksum, its license.

Pinned to upstream commits. ``sha256`` is the file's SHA-256; where upstream publishes only a git blob
id (files we have not seen byte for byte), ``git_blob`` is verified instead: SHA-1 of
``b"blob <size>\\0" + content``, the id git itself gives the file.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

GH = "https://raw.githubusercontent.com"


@dataclass(frozen=True)
class DataFile:
    key: str  # also its relative path inside a data directory
    url: str | None  # None: no single upstream file (see note)
    license: str
    sha256: str | None = None
    git_blob: str | None = None
    note: str = ""


DATA_FILES: tuple[DataFile, ...] = (
    DataFile("geneval/evaluation_metadata.jsonl", f"{GH}/djghosh13/geneval/af4902f24d3ca90ebbb446dd9891a59e0f82725f/prompts/evaluation_metadata.jsonl", "MIT", sha256="5c48e0813e812e3c373fa5c8ed07a8f0a483be30272b4427b0559c8048e67c13"),
    DataFile("geneval/generation_prompts.txt", f"{GH}/djghosh13/geneval/af4902f24d3ca90ebbb446dd9891a59e0f82725f/prompts/generation_prompts.txt", "MIT", sha256="55b6e3650e980c13daf30569eb666e000faf19bfc2b7b4cbe999fcdb7aa9d680"),
    DataFile("geneval/object_names.txt", f"{GH}/djghosh13/geneval/af4902f24d3ca90ebbb446dd9891a59e0f82725f/prompts/object_names.txt", "MIT", sha256="608f6a0e5c8ca1c7a92b818430141fe268c85b7930b50f4160f1d65893b5bacd"),
    DataFile("t2i_compbench/3d_spatial.txt", f"{GH}/Karine-Huang/T2I-CompBench/1b7094991a57f3c22abdd4f6e8ba6c1a15517073/examples/dataset/3d_spatial.txt", "MIT", sha256="1ae21ab1c669cca035f8ce27c83a312dd4ecddc0796a2d4a6910163b9a92fa3f"),
    DataFile("t2i_compbench/3d_spatial_train.txt", f"{GH}/Karine-Huang/T2I-CompBench/1b7094991a57f3c22abdd4f6e8ba6c1a15517073/examples/dataset/3d_spatial_train.txt", "MIT", sha256="0bba7e9ad31b0ce7908f6cbf2426a4b7ef6e8b841c1b737d0ad2d5b8e688dd93"),
    DataFile("t2i_compbench/3d_spatial_val.txt", f"{GH}/Karine-Huang/T2I-CompBench/1b7094991a57f3c22abdd4f6e8ba6c1a15517073/examples/dataset/3d_spatial_val.txt", "MIT", sha256="c9953597315f36a5fcb41291bb19bdc6ab5f64a0fa760d691b4854a73f5d1fe9"),
    DataFile("t2i_compbench/color.txt", f"{GH}/Karine-Huang/T2I-CompBench/1b7094991a57f3c22abdd4f6e8ba6c1a15517073/examples/dataset/color.txt", "MIT", sha256="e3034f86a70c3422dd7157c050dc9c8346a32162a3f1165302c9dba05c4f48f3"),
    DataFile("t2i_compbench/color_train.txt", f"{GH}/Karine-Huang/T2I-CompBench/1b7094991a57f3c22abdd4f6e8ba6c1a15517073/examples/dataset/color_train.txt", "MIT", sha256="db5d3287027d453f8c977f0c7315f8a01a770f02f61fa54ae19406762982393f"),
    DataFile("t2i_compbench/color_val.txt", f"{GH}/Karine-Huang/T2I-CompBench/1b7094991a57f3c22abdd4f6e8ba6c1a15517073/examples/dataset/color_val.txt", "MIT", sha256="1634259756dbc77d13093d907d414480080ec9790a8c97ad09efaea7b2534f2d"),
    DataFile("t2i_compbench/color_val_seen.txt", f"{GH}/Karine-Huang/T2I-CompBench/1b7094991a57f3c22abdd4f6e8ba6c1a15517073/examples/dataset/color_val_seen.txt", "MIT", sha256="9b2859d9107b2ed4cae95808749de5ac3557a280eb79067a8ef55c4eec7711a9"),
    DataFile("t2i_compbench/color_val_unseen.txt", f"{GH}/Karine-Huang/T2I-CompBench/1b7094991a57f3c22abdd4f6e8ba6c1a15517073/examples/dataset/color_val_unseen.txt", "MIT", sha256="7fa6f76bb602df9624262ee819f0b1ede20c14880cbacfb7fe8ce79f8157b5c2"),
    DataFile("t2i_compbench/complex.txt", f"{GH}/Karine-Huang/T2I-CompBench/1b7094991a57f3c22abdd4f6e8ba6c1a15517073/examples/dataset/complex.txt", "MIT", sha256="58c982554cfe40bedafe3fb495f18196bc0d3905f94b984e0580b24cb624f171"),
    DataFile("t2i_compbench/complex_train.txt", f"{GH}/Karine-Huang/T2I-CompBench/1b7094991a57f3c22abdd4f6e8ba6c1a15517073/examples/dataset/complex_train.txt", "MIT", sha256="d214ac45cb3c5307dd14a144c8c69aa5ffdcc7be74ff71b5dac989f8ca9f924b"),
    DataFile("t2i_compbench/complex_train_action.txt", f"{GH}/Karine-Huang/T2I-CompBench/1b7094991a57f3c22abdd4f6e8ba6c1a15517073/examples/dataset/complex_train_action.txt", "MIT", sha256="2bf41d7d857883a7344aed46c45343f5089a71cc394d81c00f4aab5348a81dc8"),
    DataFile("t2i_compbench/complex_train_spatial.txt", f"{GH}/Karine-Huang/T2I-CompBench/1b7094991a57f3c22abdd4f6e8ba6c1a15517073/examples/dataset/complex_train_spatial.txt", "MIT", sha256="a7ccfa228a825497db4e6e688332a90f3b53da66a76da324390b597be92a0da0"),
    DataFile("t2i_compbench/complex_train_spatialaction.txt", f"{GH}/Karine-Huang/T2I-CompBench/1b7094991a57f3c22abdd4f6e8ba6c1a15517073/examples/dataset/complex_train_spatialaction.txt", "MIT", sha256="933cdc3e6eeaa6564f762736dd32f5e74c4809381fc2c2787bec434bc6b0c7ea"),
    DataFile("t2i_compbench/complex_val.txt", f"{GH}/Karine-Huang/T2I-CompBench/1b7094991a57f3c22abdd4f6e8ba6c1a15517073/examples/dataset/complex_val.txt", "MIT", sha256="1b808018b8d9916db3d47d5aa2ef18377a3549a56901a474156f799824cdf3b4"),
    DataFile("t2i_compbench/complex_val_action.txt", f"{GH}/Karine-Huang/T2I-CompBench/1b7094991a57f3c22abdd4f6e8ba6c1a15517073/examples/dataset/complex_val_action.txt", "MIT", sha256="d49ee4c7f99e3f3379fb8704a54ff5288b83bb412971edf616a4721c2473308e"),
    DataFile("t2i_compbench/complex_val_spatial.txt", f"{GH}/Karine-Huang/T2I-CompBench/1b7094991a57f3c22abdd4f6e8ba6c1a15517073/examples/dataset/complex_val_spatial.txt", "MIT", sha256="6c7ac0ab75c7c9080cfc7b421fb059b9b0febb98471707aeedf58771088abc02"),
    DataFile("t2i_compbench/complex_val_spatialaction.txt", f"{GH}/Karine-Huang/T2I-CompBench/1b7094991a57f3c22abdd4f6e8ba6c1a15517073/examples/dataset/complex_val_spatialaction.txt", "MIT", sha256="e02ddc7fed812e6577e7386ec2137ce0a994a5ce19771661f68df7ac349a6ca9"),
    DataFile("t2i_compbench/new_objects.txt", f"{GH}/Karine-Huang/T2I-CompBench/1b7094991a57f3c22abdd4f6e8ba6c1a15517073/examples/dataset/new_objects.txt", "MIT", sha256="f39a3d2ff6067d7738673cbf465dc659ccc750776162989a5d9916f1d5f3e231"),
    DataFile("t2i_compbench/non_spatial.txt", f"{GH}/Karine-Huang/T2I-CompBench/1b7094991a57f3c22abdd4f6e8ba6c1a15517073/examples/dataset/non_spatial.txt", "MIT", sha256="90ae0e995992768d8ddb862d821733103ebf822668a42c857862cc71018a0009"),
    DataFile("t2i_compbench/non_spatial_train.txt", f"{GH}/Karine-Huang/T2I-CompBench/1b7094991a57f3c22abdd4f6e8ba6c1a15517073/examples/dataset/non_spatial_train.txt", "MIT", sha256="dbac5a9ec83204dcd0c3538a12d3212e2ce66db6f7ba45b49a1d869b2d3f2430"),
    DataFile("t2i_compbench/non_spatial_val.txt", f"{GH}/Karine-Huang/T2I-CompBench/1b7094991a57f3c22abdd4f6e8ba6c1a15517073/examples/dataset/non_spatial_val.txt", "MIT", sha256="04c56cc9ac441dc9ea6c5157652058bd1635b5308526dd31bb29a1caab9a758d"),
    DataFile("t2i_compbench/numeracy.txt", f"{GH}/Karine-Huang/T2I-CompBench/1b7094991a57f3c22abdd4f6e8ba6c1a15517073/examples/dataset/numeracy.txt", "MIT", sha256="ba97b876f32f6cac34507a085c7e7ecc6079641b5cbd0fc0c1eb5240ac4b64f0"),
    DataFile("t2i_compbench/numeracy_train.txt", f"{GH}/Karine-Huang/T2I-CompBench/1b7094991a57f3c22abdd4f6e8ba6c1a15517073/examples/dataset/numeracy_train.txt", "MIT", sha256="f66bb8708cb0be23c0406e14d892b25661b2b71e3e72abddc79c38466ab629c6"),
    DataFile("t2i_compbench/numeracy_val.txt", f"{GH}/Karine-Huang/T2I-CompBench/1b7094991a57f3c22abdd4f6e8ba6c1a15517073/examples/dataset/numeracy_val.txt", "MIT", sha256="dad8df141604b70ba7554bec724e3db0a80023680769b5c514854ea2d2527bbe"),
    DataFile("t2i_compbench/previous_versions/color.pre-2025-09-03.txt", f"{GH}/Karine-Huang/T2I-CompBench/7728deac05e17903b3145befd9b7207c7c019573/examples/dataset/color.txt", "MIT", sha256="a0b1c5c9807664a73848fa8914106a20737637d420aae8a67304ee98c1764094"),
    DataFile("t2i_compbench/previous_versions/color_val.pre-2025-09-03.txt", f"{GH}/Karine-Huang/T2I-CompBench/7728deac05e17903b3145befd9b7207c7c019573/examples/dataset/color_val.txt", "MIT", sha256="1e37a12c1861bf6b11623eaffb0bf6d6eeea9702caf45b95d040f1721bba7f4f"),
    DataFile("t2i_compbench/shape.txt", f"{GH}/Karine-Huang/T2I-CompBench/1b7094991a57f3c22abdd4f6e8ba6c1a15517073/examples/dataset/shape.txt", "MIT", sha256="571dfc71ecbea33aa4e504acbe0a7519780920012d9ad360aa212e7e4b6eb6df"),
    DataFile("t2i_compbench/shape_train.txt", f"{GH}/Karine-Huang/T2I-CompBench/1b7094991a57f3c22abdd4f6e8ba6c1a15517073/examples/dataset/shape_train.txt", "MIT", sha256="451bdfccd330d4cf979d45664817be7959e89250b93d5c591cc562b858175a87"),
    DataFile("t2i_compbench/shape_val.txt", f"{GH}/Karine-Huang/T2I-CompBench/1b7094991a57f3c22abdd4f6e8ba6c1a15517073/examples/dataset/shape_val.txt", "MIT", sha256="37e1a276906c7ea9516cbd7ac8501be896006c0c17ca7344f260562834455bae"),
    DataFile("t2i_compbench/shape_val_seen.txt", f"{GH}/Karine-Huang/T2I-CompBench/1b7094991a57f3c22abdd4f6e8ba6c1a15517073/examples/dataset/shape_val_seen.txt", "MIT", sha256="5581f4c8904e11b00fe6e33d2cc21a5822f59f39f43fa51479bc30aa6d458a4d"),
    DataFile("t2i_compbench/shape_val_unseen.txt", f"{GH}/Karine-Huang/T2I-CompBench/1b7094991a57f3c22abdd4f6e8ba6c1a15517073/examples/dataset/shape_val_unseen.txt", "MIT", sha256="35b17a7b015405c5c96c51c5cd969a786b3855c48e6f68c184626f5db444d987"),
    DataFile("t2i_compbench/spatial.txt", f"{GH}/Karine-Huang/T2I-CompBench/1b7094991a57f3c22abdd4f6e8ba6c1a15517073/examples/dataset/spatial.txt", "MIT", sha256="66f6b1dcf335389111a0379357fbf5233498e67ba15251ee0f7de2f1ac620ae1"),
    DataFile("t2i_compbench/spatial_train.txt", f"{GH}/Karine-Huang/T2I-CompBench/1b7094991a57f3c22abdd4f6e8ba6c1a15517073/examples/dataset/spatial_train.txt", "MIT", sha256="af14cdf2320057d98f94077e6211c2ddfaabfbb9e3842873657baabb17e00de6"),
    DataFile("t2i_compbench/spatial_val.txt", f"{GH}/Karine-Huang/T2I-CompBench/1b7094991a57f3c22abdd4f6e8ba6c1a15517073/examples/dataset/spatial_val.txt", "MIT", sha256="8707a1d7e42ce3002d95363cf55f74bd043c843ae27108f5125aaaa7840ca988"),
    DataFile("t2i_compbench/texture.txt", f"{GH}/Karine-Huang/T2I-CompBench/1b7094991a57f3c22abdd4f6e8ba6c1a15517073/examples/dataset/texture.txt", "MIT", sha256="9957553c3e653ab54660454615ea5f3c9d4b807eca9c13b44cb9679d3f2c425e"),
    DataFile("t2i_compbench/texture_train.txt", f"{GH}/Karine-Huang/T2I-CompBench/1b7094991a57f3c22abdd4f6e8ba6c1a15517073/examples/dataset/texture_train.txt", "MIT", sha256="4846315c5972f9e9cc82e4833099e8ec2c28b999ca77269512715f3f56bde54f"),
    DataFile("t2i_compbench/texture_val.txt", f"{GH}/Karine-Huang/T2I-CompBench/1b7094991a57f3c22abdd4f6e8ba6c1a15517073/examples/dataset/texture_val.txt", "MIT", sha256="fbb5363515b4a28009e360afaaaf389d2dd2289e50dbb0c6ef4ea0c7fe4f3d4f"),
    DataFile("t2i_compbench/texture_val_seen.txt", f"{GH}/Karine-Huang/T2I-CompBench/1b7094991a57f3c22abdd4f6e8ba6c1a15517073/examples/dataset/texture_val_seen.txt", "MIT", sha256="5548a49c68efefbbc88b2eb6dffd0f141373235370659158a5d15fdbd82c8c96"),
    DataFile("t2i_compbench/texture_val_unseen.txt", f"{GH}/Karine-Huang/T2I-CompBench/1b7094991a57f3c22abdd4f6e8ba6c1a15517073/examples/dataset/texture_val_unseen.txt", "MIT", sha256="6035f7dd8fd9efd6fbeedef64b04e1f651e977b2a1b9c47365c9e4eed0edc27b"),
    DataFile("flowgrpo/geneval/test_metadata.jsonl", f"{GH}/yifan123/flow_grpo/ac4c86e8cae021841f1fde853d340e0db67690dd/dataset/geneval/test_metadata.jsonl", "MIT", sha256="cec4b24b9fee7bac21c8f787054ecc8dc9ff831674037713a4cd35e0f0a74a28"),
    DataFile("flowgrpo/geneval_unseen_objects/test_metadata.jsonl", f"{GH}/yifan123/flow_grpo/ac4c86e8cae021841f1fde853d340e0db67690dd/dataset/geneval_unseen_objects/test_metadata.jsonl", "MIT", sha256="174536b49af23b0e2abc4e3215fce5d375de13d6040a50642709240a76dc1a24"),
    DataFile("flowgrpo/ocr/test.txt", f"{GH}/yifan123/flow_grpo/ac4c86e8cae021841f1fde853d340e0db67690dd/dataset/ocr/test.txt", "MIT", sha256="4dd8caf3ab6ade73bd376c7d14c6ca49b6eacfb1bd321e22c40714ae4a98d4dc"),
    DataFile("flowgrpo/pickscore/test.txt", f"{GH}/yifan123/flow_grpo/ac4c86e8cae021841f1fde853d340e0db67690dd/dataset/pickscore/test.txt", "MIT", sha256="d75c025fa451866e70f7e36243f7cdd93095523cb51f5f9651f2ce3236d20262"),
    DataFile("flowgrpo/pickscore/train.txt", f"{GH}/yifan123/flow_grpo/ac4c86e8cae021841f1fde853d340e0db67690dd/dataset/pickscore/train.txt", "MIT", sha256="2f425adcbb9a6d0feee7c6c448e1cb83a1f71deca9434b803907e2578eca837f"),
    DataFile("densealignbench/metadata.jsonl", f"{GH}/roooobotx/prompt_echo/84e1989415e3bdf336ffb8e872f58905b0628973/metadata.jsonl", "Apache-2.0 (README statement; no LICENSE file)", sha256="3a7679d568aac9a553ce809ff1a8ba545e3ea896d5513deda4207467775d332a"),
    DataFile("dpg_bench/prompts.jsonl", None, "Apache-2.0", sha256="b6402055610e42df0050867b5b85cc966df6ccc6c5463dcc1cb076fb59013d93",
             note="assembled from ELLA dpg_bench/prompts/<id>.txt at 3c228f1d as JSONL {id, prompt}"),
    DataFile("dpg_bench/dpg_bench.csv", f"{GH}/TencentQQGYLab/ELLA/3c228f1dc6c4d3cad0a47493816151a419f14db3/dpg_bench/dpg_bench.csv", "Apache-2.0", git_blob="98457fc9901943f51ff9a30367250fc292533bed"),
    DataFile("geneval2/geneval2_data.jsonl", f"{GH}/facebookresearch/GenEval2/a6e82d2289e8d418f27f0adee77908b07060eea3/geneval2_data.jsonl", "CC BY-NC 4.0 (NON-COMMERCIAL use only; attribution: Kamath et al., GenEval 2)", sha256="09233adbc9f877fba205f1a20efa4a8640e7e62a91dfd55893562bed8a928e43"),
    DataFile("drawbench/test.txt", f"{GH}/NVlabs/DiffusionNFT/24af5554898d85e93efa492f42b5e9cdf4156e9b/dataset/drawbench/test.txt", "Apache-2.0 (DiffusionNFT); prompts: Google DrawBench, unlicensed", sha256="9006b98feabb94b28a2bc0c88de42fd4f31a9ec3c2a19e308a02c5385b7172f0"),
    DataFile("flowgrpo/geneval/train_metadata.jsonl", f"{GH}/yifan123/flow_grpo/ac4c86e8cae021841f1fde853d340e0db67690dd/dataset/geneval/train_metadata.jsonl", "MIT", git_blob="0b97e8a6802c08fc7537cd00c76ae79c851bddcb"),
    DataFile("flowgrpo/geneval_unseen_objects/train_metadata.jsonl", f"{GH}/yifan123/flow_grpo/ac4c86e8cae021841f1fde853d340e0db67690dd/dataset/geneval_unseen_objects/train_metadata.jsonl", "MIT", git_blob="05715c3713940177a2a20fd0575ec972a3bf2e89"),
    DataFile("flowgrpo/ocr/train.txt", f"{GH}/yifan123/flow_grpo/ac4c86e8cae021841f1fde853d340e0db67690dd/dataset/ocr/train.txt", "MIT", git_blob="3ce0521b77b0a9031191d66ecc36ebaaf27a3922"),
)

BY_KEY: dict[str, DataFile] = {f.key: f for f in DATA_FILES}

NON_COMMERCIAL = re.compile(r"\bNC\b|non-?commercial", re.IGNORECASE)


def terms(licenses: Iterable[str]) -> str:
    """The distinct licenses, joined, flagged ``[non-commercial]`` where any forbids commercial use."""
    text = "; ".join(dict.fromkeys(x for x in licenses if x))
    return f"{text} [non-commercial]" if NON_COMMERCIAL.search(text) else text
