"""Typed configuration: one frozen dataclass per component, loaded from YAML presets.

Every default lives here and only here. YAML presets (``kdtrack/configs/*.yaml``)
and ``--set section.field=value`` overrides change fields; an unknown key or a
value of the wrong type is an error naming the key and the file it came from.
At the Ray boundary pass ``config_to_dict(cfg)`` and rebuild with
``config_from_dict(d)``; the same flat dict is what gets logged to MLflow.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml

from kdtrack.config_checks import range_violations, training_violations

PRESET_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A config key or value is wrong; the message names the key and its source."""


# --------------------------------------------------------------------------- components


@dataclass(frozen=True)
class SynthConfig:
    """The procedural crowd world (``kdtrack.synth``); presets ``tiny``/``small``/``large``."""

    seed: int = 0  # every file is a pure function of (preset fields, seed)
    image_width: int = 320  # still-image and video frame width, pixels
    image_height: int = 192  # still-image and video frame height, pixels
    num_identities: int = 136  # people in the identity bank; >= the sum of the population sizes (*_ids) below
    hard_negative_fraction: float = 0.3  # share of identities cloned from another with small changes
    people_per_image: tuple[int, int] = (2, 9)  # inclusive range of people in a still image
    crowdhuman_train_images: int = 120  # CrowdHuman-style .odgt train images
    crowdhuman_val_images: int = 20  # CrowdHuman-style .odgt val images
    coco_train_images: int = 80  # COCO-style train images (some contain no person)
    coco_val_images: int = 16  # COCO-style val images
    kinetics_clips: int = 6  # Kinetics-style clips (camera pan/zoom, unlabeled)
    kinetics_clip_frames: int = 40  # frames per clip
    kinetics_fps: int = 10  # clip frame rate
    mot_sequences: int = 2  # MOT17-style training sequences (static camera)
    mot_sequence_frames: int = 40  # frames per MOT sequence
    mot_fps: int = 10  # MOT sequence frame rate
    mot_ids: int = 24  # bank identities walking in MOT sequences (one shared city; a 40-frame tiny sequence uses <= 13)
    person_search_cameras: int = 3  # cameras sharing identities in the person-search set
    person_search_train_images: int = 40  # training frames of the person-search set
    person_search_test_images: int = 40  # test (gallery) frames of the person-search set
    person_search_queries: int = 20  # test query persons (one per identity, <= person_search_test_ids)
    person_search_val_images: int = 20  # validation frames (own identities, same cameras), split "val"
    person_search_val_queries: int = 8  # val query persons (<= person_search_val_ids), manifest "val_queries"
    person_search_train_ids: int = 30  # bank identities in person-search train frames
    person_search_val_ids: int = 12  # bank identities in person-search val frames
    person_search_test_ids: int = 30  # bank identities in person-search test frames
    person_search_gallery_sizes: tuple[int, ...] = (10, 20)  # CUHK-SYSU style gallery sizes
    reid_train_ids: int = 24  # Market-1501-style identities in bounding_box_train
    reid_test_ids: int = 16  # identities in query + bounding_box_test
    reid_crops_per_id: int = 8  # crops per identity and split
    motion_blur_prob: float = 0.2  # chance a video frame gets motion blur
    jpeg_quality: tuple[int, int] = (70, 95)  # JPEG quality range written to disk
    workers: int = 1  # >1 spreads generation over processes / Ray tasks (jobs.generate_synth)
    shard_size: int = 20  # still images per work unit (one unit = one shard of one split)
    horizon_fraction: tuple[float, float] = (0.25, 0.45)  # horizon row / image height, drawn per scene
    person_height_gain: float = 0.85  # person height px = gain * (foot_y - horizon_y) * identity height scale
    min_annotated_visibility: float = 0.05  # still images: people less visible than this are not annotated
    occluders_per_image: tuple[int, int] = (0, 3)  # static poles / benches / boxes per scene (inclusive)
    poster_prob: float = 0.3  # chance a scene has a poster with a person-like figure (CrowdHuman "mask", MOT class 12)
    crowd_group_prob: float = 0.2  # chance a still image has a dense distant group (COCO iscrowd=1, CrowdHuman ignore)
    coco_no_person_fraction: float = 0.15  # share of COCO images holding only non-person objects
    kinetics_val_clips: int = 2  # clips in validate.csv (split "val")
    people_per_video: tuple[int, int] = (3, 7)  # walkers kept in view at once in clips / sequences (inclusive)
    walk_speed: tuple[float, float] = (0.5, 1.1)  # walking speed, body heights per second (1.4 m/s ~ 0.8)
    stride_frequency: float = 0.9  # full gait cycles per second at speed 1 body height / s
    turn_prob: float = 0.01  # per-frame chance a walker turns around (viewpoint change)
    static_people_per_sequence: int = 1  # MOT gt class 7 (static person, consider 0)
    distractors_per_sequence: int = 1  # MOT gt class 8 (mannequin, consider 0)
    det_miss_rate: float = 0.15  # public detections: chance a visible person is missed
    det_false_positives_per_frame: float = 0.3  # public detections: mean false positives per frame (Poisson)
    det_jitter: float = 0.05  # public detections: box jitter std as a fraction of box size
    camera_pan: float = 1.5  # Kinetics clips: max camera pan, px per frame
    camera_zoom: tuple[float, float] = (1.0, 1.3)  # Kinetics clips: camera zoom range (1 = no zoom)
    lighting_gain: tuple[float, float] = (0.7, 1.25)  # global brightness gain range per image / camera
    lighting_drift: float = 0.004  # videos: max gain change per frame
    video_jpeg_prob: float = 0.2  # chance a video frame gets JPEG artefacts before encoding
    reid_cameras: int = 4  # Market-1501-style cameras
    reid_crop_size: tuple[int, int] = (128, 64)  # Re-ID crop (height, width) in pixels
    reid_junk_crops: int = 6  # pid -1 crops (bad detections) in bounding_box_test
    reid_distractor_crops: int = 6  # pid 0000 crops (background / strangers) in bounding_box_test
    min_person_height: float = 12.0  # pixels; still-image people are placed at least this tall
    query_min_visibility: float = 0.5  # person-search queries are drawn from appearances at least this visible
    unlabeled_person_prob: float = 0.2  # person-search: chance a person is an anonymous passer-by (pid -1)


@dataclass(frozen=True)
class ModelConfig:
    """The student network (METHOD.md section 1)."""

    backbone: Literal["tiny", "resnet18_unet", "resnet34_unet", "resnet50_unet", "dla34"] = "tiny"
    deformable: bool = True  # 3x3 deformable convs in the neck (False: plain conv, faster)
    head_conv: int = 256  # channels of each head's 3x3 conv
    size_channels: Literal[2, 4] = 4  # 4: l,t,r,b distances; 2: w,h
    embedding_dim: int = 128  # identity channels k (KD: 2048 = teacher dim; IDF: 256)
    normalize_embedding: bool = True  # L2-normalise the identity output (IDF); False for KD regression
    embedding_norm: Literal["batchnorm", "none"] = "batchnorm"  # centre the identity output before the L2 norm (BatchNorm without affine, as MoCo v2 / SimCLR heads): at init every person shares one direction (cosine 0.94); centring alone delays the id-free collapse but does not prevent it (the key encoder does, docs/results/idf-stage1.md)
    heatmap_bias: float = -2.19  # initial bias of the heatmap logits (prior 0.1)
    width: int = 32  # base channel width of the tiny backbone
    pretrained: str = ""  # local checkpoint to initialise from ("" = random): a kdtrack checkpoint, a torchvision ImageNet ResNet (resnet*_unet encoder) or a CenterNet/FairMOT DLA-34 (dla34: ctdet_coco_dla_2x.pth); the format is read from the keys, a one-line report says what loaded
    pretrained_strict: bool = True  # a kdtrack `pretrained` must match every key (False: load the overlap); torchvision / CenterNet weights always load their overlap; loading nothing at all is always an error
    neck_channels: int = 256  # resnet*_unet: width of the deformable skip convs and decoder (PointID: 256)
    # resnet*_unet decoder merge of the x2 up-sampled map with the level's skip output. "concat" is PointID's
    # (CVPR 2022, Fig. 2 text: concatenate, then a plain 3x3 conv-BN-ReLU brings 2 x neck_channels back to
    # neck_channels); "add" sums them (no merge conv; the layout of checkpoints written before this field).
    unet_merge: Literal["concat", "add"] = "concat"
    input_width: int = 320  # network input width (letterboxed), multiple of 32
    input_height: int = 192  # network input height, multiple of 32
    down_ratio: int = 4  # output stride r
    # where a person's identity vector is read from the identity map (kdtrack.readout), in training and at inference:
    # "cell" = the box's centre cell (FairMOT's); "centre" = the central 40 % x 80 % of the box averaged; "centre_halves"
    # = that region as an upper and a lower band, concatenated (2 x embedding_dim numbers); the supervised recipes train
    # the pooled ones
    id_readout: Literal["cell", "centre", "centre_halves"] = "cell"


@dataclass(frozen=True)
class TeacherConfig:
    """The frozen Re-ID teacher (strong-baseline style, METHOD.md section 3)."""

    backbone: Literal["tiny", "resnet18", "resnet50", "resnet50_ibn"] = "tiny"
    last_stride: int = 1  # stride of the last ResNet stage (1 keeps a 16x8 map at 256x128)
    pooling: Literal["gem", "avg"] = "gem"
    gem_p: float = 3.0  # initial GeM exponent
    feature_dim: int = 0  # output dimension; 0 = the backbone's own (2048 R50, 512 R18, 8*width tiny), else a linear reduction
    neck_feat: Literal["after_bn", "before_bn"] = "after_bn"  # retrieval/KD feature in eval (strong baseline: after BNNeck)
    width: int = 32  # base channel width of the tiny teacher backbone
    crop_height: int = 256  # teacher input height
    crop_width: int = 128  # teacher input width
    label_smoothing: float = 0.1  # ID cross-entropy label smoothing
    triplet_margin: float = 0.3  # batch-hard triplet margin
    checkpoint: str = ""  # path of a trained teacher checkpoint ("" = untrained; train.recipe=kd refuses that without teacher.embeddings)
    embeddings: str = ""  # offline teacher embeddings (a jobs.teacher_embeddings --out folder): KD reads its targets there and never builds the teacher (teacher.checkpoint is then not used)
    pretrained: str = ""  # ImageNet ResNet state dict (torchvision or IBN-Net keys) that initialises the backbone for train.recipe=teacher; ignored when checkpoint is set
    # Training the teacher (train.recipe=teacher, kdtrack.data.reid_data; BoT strong baseline on Market-1501-style crops).
    # The batch is train_p x train_k crops per worker (train.batch_size_per_worker is not used); the lr schedule is
    # train.lr / lr_steps / lr_gamma after the warm-up below.
    train_p: int = 16  # PK sampler: distinct identities per batch
    train_k: int = 4  # PK sampler: crops per identity (>= 2 so batch-hard triplets have positives; fewer crops: drawn with replacement)
    flip_prob: float = 0.5  # random horizontal flip
    pad: int = 10  # zero padding in pixels before the random crop back to crop_height x crop_width (0 = off)
    random_erasing: float = 0.5  # probability of random erasing (2-40 % of the crop, aspect 0.3-3.3, mean-pixel fill)
    warmup_epochs: int = 10  # linear lr warm-up from warmup_factor x train.lr to train.lr over these epochs (0 = off)
    warmup_factor: float = 0.1  # lr multiplier at the first iteration (BoT: 3.5e-5 -> 3.5e-4)
    eval_batch_size: int = 64  # crops per teacher forward pass when embedding for evaluation


@dataclass(frozen=True)
class LossConfig:
    """Detection, KD and contrastive losses (METHOD.md sections 2-4)."""

    focal_alpha: float = 2.0  # focal loss exponent on (1 - p) at positives
    focal_beta: float = 4.0  # focal loss exponent on (1 - gt) at negatives
    heatmap_weight: float = 1.0  # w_c
    size_weight: float = 0.1  # w_s
    offset_weight: float = 1.0  # w_o
    id_mode: Literal["kd", "contrastive", "supervised", "hybrid", "none"] = "contrastive"  # which identity loss (supervised: FairMOT's identity classifier, METHOD.md section 4b; hybrid: KD + contrastive, kdtrack's)
    eta: float = 1.0  # KD: weight of the soft (teacher) term; 1 - eta for hard-label CE
    num_id_classes: int = 0  # identity classifier size (KD hard labels, supervised); 0 = the number of labelled people in the training data
    # supervised: a metric term beside the classifier over a cross-batch memory of the last N labelled unit vectors
    # (XBM + supervised contrastive, kdtrack.losses.supervised; not FairMOT's); 0 = off (FairMOT's loss)
    supervised_memory: int = 0
    supervised_metric_weight: float = 1.0  # w of the metric term: L_id = CE + w l_metric
    supervised_temperature: float = 0.1  # tau of the metric term
    kd_reduction: Literal["sum_per_object", "mean"] = "sum_per_object"  # KD soft smooth-L1: summed over the embedding channels and averaged over objects (KDMOT's per-object scale; its trainer also sums over objects, kdtrack.losses.kd) | averaged over the channels too (k times weaker: 2048 for KDMOT)
    uncertainty: bool = True  # Kendall uncertainty weighting of L_det and L_id (id_mode kd and supervised; IDF adds lambda l_id; hybrid: of L_det, L_KD and l_id)
    s_det_init: float = -1.85  # initial log-variance of the detection term
    s_id_init: float = -1.05  # initial log-variance of the identity term (hybrid: of its KD term)
    # hybrid: initial log-variance of the contrastive term; -0.24 = s_det_init - ln 0.2 starts it at IDF's lambda
    # (0.2) relative to detection
    s_contrastive_init: float = -0.24
    temperature: float = 0.07  # contrastive tau
    queue_size: int = 32768  # contrastive negative FIFO queue length
    key_momentum: float = 0.99  # contrastive: momentum m of the EMA key encoder that fills the queue (MoCo); 0 = the student's own detached embeddings (stale queue: collapses)
    batch_negatives: bool = True  # contrastive: the other people of the current batch are negatives too (with gradient); False = queue only (the paper's text), which collapses
    id_weight: float = 0.2  # contrastive lambda
    # contrastive, pooled readouts: hidden width of an MLP projection head (Linear-ReLU-Linear, SimCLR / MoCo v2; not
    # the paper's) between each person's read vector and the loss; retrieval reads the vector before it; the key
    # encoder's vectors go through the same head without gradient (MoCo v2 keeps a momentum copy); 0 = off
    projection_dim: int = 0
    # contrastive: a person's positives are the momentum key encoder's vectors of its other view (no gradient), and
    # the batch's other people are negatives as the key encoder sees them, as in MoCo: then every similarity the
    # loss compares is student-to-key; False = the student's own vectors of the other view (with gradient)
    key_positives: bool = False
    nn_positives: int = 0  # contrastive: each person's j nearest queue entries are positives too (NNCLR; not the paper's); 0 = off
    detection_views: Literal["all", "first"] = "all"  # contrastive: detection losses on every view, or on view 0 alone (with data.background_swap_views=last the only whole image: the pasted view's people sit on a foreign background with feathered edges)
    max_objects: int = 500  # K: objects encoded per image (extra are dropped and counted)
    min_overlap: float = 0.7  # gaussian radius rule
    centre_region_radius: int = 1  # contrastive positives: cells within this Chebyshev radius of the centre cell, inside the box
    size_loss_scale: float = 0.25  # size L1 on (input pixels x this); 1/down_ratio = FairMOT's output-pixel units
    # a frozen copy of train.init_from's network gives the detection outputs the student keeps on every training
    # image (kdtrack.losses.anchor: learning without forgetting, for IDF stage 2's shared body); 0 = off
    detection_anchor_weight: float = 0.0

    @property
    def contrasts_people(self) -> bool:
        """The dense contrastive term is on (IDF; the hybrid's second identity term): the samples' ids are
        person keys, unique per image and shared by a person's two views."""
        return self.id_mode in ("contrastive", "hybrid")

    @property
    def distils(self) -> bool:
        """The KD term is on (KD; the hybrid's first identity term): the samples carry teacher features."""
        return self.id_mode in ("kd", "hybrid")


@dataclass(frozen=True)
class DecodeConfig:
    """Inference decode (METHOD.md section 5, 'Detection decode at inference')."""

    top_k: int = 500  # peaks kept per image
    score_threshold: float = 0.4  # detection confidence threshold for tracking
    nms_kernel: int = 3  # max-pool window for peak extraction
    clip_to_image: bool = False  # clip decoded boxes to the frame (False keeps amodal boxes, as MOT17 gt is)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and the Ray Train loop."""

    recipe: Literal["teacher", "kd", "contrastive", "video", "detection", "supervised", "video_classify", "hybrid"] = "contrastive"  # jobs.train runs detection | contrastive | kd | video | supervised | video_classify | hybrid (must match loss.id_mode: none | contrastive | kd | contrastive | supervised | supervised | hybrid) and teacher (the Re-ID teacher; loss.id_mode unused); video = IDF stage 2 on pseudo-labelled frame pairs (data.pseudo_labels); video_classify = the same pairs, each pseudo-identity a class of the supervised loss; hybrid = KD and IDF stage 1 in one run (kdtrack's)
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = 1e-4
    momentum: float = 0.9  # SGD only
    weight_decay: float = 0.0
    epochs: int = 2  # passes over the data; 0 = unbounded: the run length is max_iterations (iteration budgets, IDF)
    max_iterations: int = 0  # >0 stops after this many iterations (iteration schedules)
    lr_steps: tuple[float, ...] = (0.6, 0.8)  # fractions of training where lr drops x0.1
    lr_gamma: float = 0.1  # lr multiplier at each of lr_steps
    # the identity classifier's lr (supervised, KD hard labels) = train.lr x this: a classifier started from
    # N(0, 0.01) over a few hundred people is what a short run fits slowest (docs/results/identity-learning.md)
    classifier_lr_mult: float = 1.0
    batch_size_per_worker: int = 4
    num_workers: int = 1  # Ray Train workers
    cpus_per_worker: float = 0.5  # 2-core machines: leave CPU for Ray Data
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"  # Ray Train ScalingConfig: how the workers lie over nodes; STRICT_SPREAD = one worker per node (no fewer nodes than workers), STRICT_PACK = all on one node
    use_gpu: bool = False  # one GPU per worker (NCCL) when True; gloo on CPU
    amp: bool = True  # mixed precision when on GPU (ignored on CPU)
    sync_batchnorm: bool = False  # with several GPU workers, BatchNorm statistics over the whole batch of every worker (SyncBatchNorm, converted before DDP): few images per GPU (idf_paper's 4) make per-GPU statistics noisy; needs train.use_gpu
    grad_clip: float = 0.0  # max gradient norm (0 = off)
    checkpoint_every: int = 1  # epochs between checkpoints (when report_every is 0)
    report_every: int = 0  # >0: report (checkpoint + metrics + validation) every this many iterations and at the end, not at epoch ends (iteration budgets, Tune's ASHA rungs); student recipes
    max_failures: int = 0  # Ray Train FailureConfig: worker-group restarts from the last checkpoint (the paper presets allow 3)
    keep_checkpoints: int = 0  # Ray Train CheckpointConfig(num_to_keep): the N most recent checkpoints stay in storage (0 = all; a KD checkpoint is ~250 MB)
    log_every: int = 10  # iterations between metric reports
    collapse_cosine: float = 0.99  # contrastive: warn when the between-person cosine of the batch stays above this (0 = never)
    collapse_patience: int = 3  # ... for this many consecutive log_every reports
    seed: int = 0  # seeds model init, shuffling and every augmentation draw
    smoke_iterations: int = 2  # --smoke-test: one epoch of this many iterations on as few records
    run_name: str = "train"  # Ray Train run name under the storage path (same name + path = resume)
    resume_policy: Literal["strict", "force"] = "strict"  # a resume with changed training fields (lr, schedule, budget, batch, model, loss, data; kdtrack.checkpoint.RESUME_FREE_FIELDS may change): strict = refuse, naming them; force = continue with the checkpoint's optimiser and schedule state (tagged in MLflow)
    init_from: str = ""  # a kdtrack checkpoint whose network weights start this run (weights only: fresh optimizer, schedule, queue); IDF stages 2 and 3
    freeze: tuple[str, ...] = ()  # student parts kept fixed (no gradient, BatchNorm statistics fixed): body | identity | detection (the heatmap, size and offset heads). IDF stage 2 freezes detection, stage 3 body + identity
    # Validation at every report (rank 0): oracle-box re-ID of the identity embedding on held-out people
    # (kdtrack.metrics.reid_probe), logged as val/<protocol>/<metric> and reported to Ray Train / Tune (the sweep objective)
    val_protocols: tuple[str, ...] = ()  # () = off; person_search (the val split's own identities) | mot (the MOT17 val halves: a sweep objective only for trials that train on the train halves)
    val_split: str = "val"  # person-search manifest split of the validation queries and gallery
    val_root: str = ""  # data root holding person_search/ (and MOT17/); "" = data.root


@dataclass(frozen=True)
class DataConfig:
    """Where the training data comes from and how Ray Data feeds it."""

    root: str = ""  # dataset root ("" = the generated synthetic world)
    sources: tuple[str, ...] = ("crowdhuman",)  # crowdhuman | coco | mot17 | person_search (its train split) | kinetics
    min_visibility: float = 0.25  # MOT17 training rows below this are ignored
    # How samples reach the train workers. ray: a Ray Data stream (data_pipelines.training: decode + augment in a
    # map_batches actor pool, split across workers); torch: a plain DataLoader per worker (single-process debugging)
    loader: Literal["ray", "torch"] = "ray"
    map_actors: int = 1  # Ray Data decode/augment actors (the pool of the whole run, shared by every worker)
    map_num_cpus: float = 0.5  # Ray CPUs per decode actor (train workers + actors must fit the cluster)
    prefetch_batches: int = 2  # batches each worker prefetches from the stream
    preserve_order: bool = True  # Ray Data keeps the stream's order (a resume skips exactly the consumed rows)
    # seconds: Ray Data's scheduling loop spins when the stream is ahead of the step; each loop step lasts at least
    # this long (data_pipelines.loop_throttle; 0 = Ray's own loop)
    scheduling_min_step_s: float = 0.02
    stream_uint8: bool = True  # canvases cross the object store as uint8 levels (exact; 4x fewer bytes than float32)
    # MiB of object store the stream may fill ahead of the step (Ray Data's resource_limits; 0 = Ray's default, a
    # share of the whole store: the decode actors then race ahead and take cores from the step)
    stream_buffer_mb: float = 0.0
    max_bad_fraction: float = 0.01  # unreadable images / clips are skipped and counted; more than this share stops the run
    on_error: Literal["raise", "skip"] = "raise"  # malformed annotation records
    augment: Literal["auto", "none", "detection", "idf_view", "idf_view_colour"] = "auto"  # kdtrack.data.transforms preset; auto: idf_view for contrastive, else detection
    # added to data.augment's preset (kdtrack.data.transforms.with_view_changes; 0 = the preset as it is): each view's
    # colour channels scaled by 1 + U(-w, w), a camera's white balance; a flat block erased with this chance per view.
    # Off in every preset: in the classified stage 2 neither moved re-ID (docs/results/identity-learning.md)
    white_balance: float = 0.0
    random_erasing: float = 0.0
    # probability per view that its people are pasted onto another training image (kdtrack.data.transforms.paste_people):
    # the two views of a person then share the person but not its surroundings (0 = off)
    background_swap: float = 0.0
    background_relayout: bool = False  # a swapped view's people go to random places (their neighbours are gone too)
    # which views may be swapped: all, or only the last (a two-view sample then always keeps one whole image for the
    # detection heads, and its pair still never shares the scene when the last view is swapped; a one-view sample's
    # only view is its last)
    background_swap_views: Literal["all", "last"] = "all"
    # a swapped view pastes each person through its outline (COCO segmentation polygons) instead of its box rectangle,
    # where the record has one (Simple Copy-Paste, Ghiasi et al. 2021): the two views then share the person and not
    # the background inside the person's box (sources without outlines, CrowdHuman, keep the rectangle)
    paste_masks: bool = False
    # each person on its way into a swapped view (kdtrack.data.transforms.PersonJitter; needs background_relayout):
    # zoomed by a factor drawn in paste_scale, mirrored with chance paste_flip, a block of it erased with chance
    # paste_erase, so that its two views no longer share the size, the side and every part of one image
    paste_scale: tuple[float, float] = (1.0, 1.0)
    paste_flip: float = 0.0
    paste_erase: float = 0.0
    min_box_size: float = 2.0  # pixels: boxes narrower / lower than this after augmentation are dropped
    min_visible_fraction: float = 0.25  # a box cut by the image border to less than this share of its area is dropped
    loader_workers: int = 0  # torch DataLoader worker processes per train worker (0 = in the train process)
    mot_split: Literal["train_half", "all"] = "train_half"  # MOT17 frames used for training (val-half kept out)
    max_records: int = 0  # >0 keeps only the first N records (debugging)
    # Multi-scale training (IDF / PointID): per sample the shorter image side is drawn from this list, the image
    # resized keeping its aspect so that the longer side stays <= multiscale_max_long_side, placed top-left and
    # padded (grey) up to multiples of 32; collate pads a batch to its largest H and W. Both views of a sample
    # share the size. () = off: every image is letterboxed to model.input_width x input_height.
    multiscale_short_sides: tuple[int, ...] = ()
    multiscale_max_long_side: int = 1024  # pixels, before the round-up to a multiple of 32
    # IDF stage 2 (train.recipe=video): frame pairs of pseudo-labelled clips (jobs.pseudo_label)
    pseudo_labels: str = ""  # labels.parquet of jobs.pseudo_label; its clips are read under <root>/kinetics
    pair_sampling: Literal["biased", "random"] = "biased"  # biased: one frame from each half of a clip (the paper's choice); random: any two labelled frames


@dataclass(frozen=True)
class MlflowConfig:
    """Where runs are logged."""

    tracking_uri: str = ""  # absolute URI; "" = sqlite under the output directory
    experiment: str = "kdtrack"
    run_name: str = ""
    # where a new experiment keeps its artifacts (config.yaml, the trained model): "" = beside a sqlite store
    # (else the tracking server's default); s3://bucket/prefix (boto3: AWS_* variables, AWS_ENDPOINT_URL or
    # MLFLOW_S3_ENDPOINT_URL for a server other than AWS) or a folder. An existing experiment keeps its own.
    artifact_location: str = ""


@dataclass(frozen=True)
class EvalConfig:
    """MOT and person-search evaluation protocols (EVALUATION.md)."""

    mot_iou_threshold: float = 0.5  # CLEAR/identity: a gt/tracker pair matches when IoU >= this
    mot_pedestrian_class: int = 1  # MOT16/17 gt class that is scored
    mot_distractor_classes: tuple[int, ...] = (2, 7, 8, 12)  # person on vehicle, static person, distractor, reflection
    mot_distractor_iou: float = 0.5  # tracker boxes matched (Hungarian, IoU >= this) to a distractor are removed
    ps_score_threshold: float = 0.5  # person search: gallery detections kept when score >= this
    ps_iou_threshold: float = 0.5  # person search: IoU for a true positive (capped by the small-box rule)
    ps_small_box_margin: float = 10.0  # pixels added to w and h in min(iou, w*h / ((w+m)(h+m)))
    ps_top_k: tuple[int, ...] = (1, 5, 10)  # person search: top-k accuracies reported
    ps_gallery_size: int = 100  # CUHK-SYSU gallery size (50, 100, 500, 1000, 2000, 4000; -1 = all test images)
    ps_cross_camera_only: bool = False  # PRW all-frames gallery: only frames from other cameras
    cpus_per_sequence: float = 1.0  # Ray CPUs per sequence-scoring task (jobs.evaluate)
    gpus_per_sequence: float = -1.0  # Ray GPUs per inference actor (mot, person-search); -1 = auto: an actor asks for one GPU when one is free as the pool starts (else CPU) and uses whatever Ray granted it
    # Inference actor pool of `jobs.evaluate mot|person-search`: each actor builds a checkpoint's network once
    num_actors: int = 0  # inference actors; 0 = auto: one per free GPU, else as many as the free CPUs hold at cpus_per_actor; never more than work items
    cpus_per_actor: float = 1.0  # Ray CPUs per inference actor (torch threads = max(1, int(this))); fractions (0.5) on a 2-core machine
    actor_start_timeout_s: float = 120.0  # an actor that asked for a GPU and is not running after this long is replaced by a CPU actor
    task_retries: int = 2  # retries of one sequence / image batch after a transient error (I/O timeout, stale NFS handle) or a lost actor
    actor_max_restarts: int = 2  # restarts of an inference actor whose process died (node lost, out-of-memory kill)
    ps_images_per_task: int = 32  # person search: images per actor call (the unit of scheduling, retry and progress)
    ps_batch_images: int = 8  # person search: images per network forward (gallery and query images share one pass)
    render_frames: int = 3  # frames per sequence drawn with boxes and ids and logged to MLflow
    # Oracle-box re-ID (kdtrack.metrics.reid_probe, `jobs.evaluate reid`): identity embeddings read at ground-truth boxes
    reid_protocols: tuple[str, ...] = ("person_search", "mot")  # protocols evaluated (person_search: cross-camera; mot: cross-time)
    reid_split: str = "test"  # person-search manifest split whose labelled boxes (pid > 0) are queries and gallery
    reid_mot_split: Literal["all", "train_half", "val_half"] = "val_half"  # MOT17 frames used (training reads train_half)
    reid_mot_gap: int = 10  # MOT: a same-id pair counts only >= this many frames apart; closer same-id pairs are junk
    reid_mot_frame_stride: int = 1  # MOT: every n-th frame of the split is used (1 = all)
    reid_min_visibility: float = 0.5  # MOT: gt boxes less visible than this are left out (their centre may lie on the occluder)
    reid_ranks: tuple[int, ...] = (1, 5, 10)  # CMC ranks reported as rank{k}
    reid_batch_images: int = 8  # images per student forward pass
    reid_context: Literal["scene", "alone"] = "scene"  # scene: each box read in its image; alone: each box on a grey canvas, only the box (grown by reid_context_pad per side) kept -- how much an embedding leans on the scene
    reid_context_pad: float = 0.15  # alone: the kept region grows by this share of the box width / height per side
    reid_baseline_seed: int = -1  # torch seed of the random-init student baseline; -1 = the checkpoint's train.seed (with model.pretrained empty: the weights its training started from)


@dataclass(frozen=True)
class PseudoLabelConfig:
    """IDF stage 2 pseudo-labelling (`jobs.pseudo_label`): detect + embed every n-th frame of each unlabeled
    clip, then DBSCAN over all person embeddings of one video (METHOD.md section 4)."""

    frame_stride: int = 1  # every n-th decoded frame of a clip is run through the network
    score_threshold: float = 0.4  # detections kept for clustering (the tracking threshold)
    max_frames: int = 0  # >0: at most this many frames per clip (after the stride), evenly spread
    batch_frames: int = 8  # frames per network forward
    eps: float = 0.02  # DBSCAN neighbourhood radius (cosine distance = 1 - cos). Measured on the small world with an earlier idf_cpu stage-1 embedding: 0.3 merges each clip into one cluster (ARI 0.47); 0.02 gives the best ARI (0.68, docs/results/idf-stages-2-3.md); consecutive frames of one person are near-duplicates, so DBSCAN chains them at a small radius. The radius follows the embedding's spread: idf_cpu, whose MoCo positives spread people apart, sets 0.08
    min_samples: int = 3  # DBSCAN core-point size (the point itself included, as scikit-learn counts)
    metric: Literal["cosine", "euclidean"] = "cosine"  # on L2-normalised embeddings both give the same clusters at matching eps
    min_track_frames: int = 2  # a cluster is a valid trajectory when it spans this many frames, with boxes in both halves of the clip; a video is kept when it has one
    num_actors: int = 0  # inference actors; 0 = auto (one per free GPU, else free CPUs / cpus_per_actor)
    cpus_per_actor: float = 1.0  # Ray CPUs per inference actor (fractions on a 2-core machine)
    gpus_per_actor: float = -1.0  # -1 = one GPU per actor when the cluster has free GPUs, else CPU
    cluster_cpus: float = 0.5  # Ray CPUs per DBSCAN task
    cluster_engine: Literal["tasks", "ray_data"] = "tasks"  # tasks: cost-balanced chunks of videos as plain Ray tasks; ray_data: one Ray Data row per video (slower on 2 cores: bench/pseudo_label.py)
    truth_iou: float = 0.5  # quality against hidden truth: a detection matches a true box at IoU >= this


# The tracker's config lives beside the tracker (``from kdtrack.tracker import
# TrackerConfig`` is its public API); it is still one frozen dataclass, one home.
from kdtrack.tracker.config import TrackerConfig  # noqa: E402


@dataclass(frozen=True)
class Config:
    """Everything one job needs; each field is a section of the YAML preset."""

    synth: SynthConfig = field(default_factory=SynthConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    pseudo: PseudoLabelConfig = field(default_factory=PseudoLabelConfig)


# --------------------------------------------------------------------------- loading


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert lists to tuples, ints to floats."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    def fail() -> ConfigError:
        return ConfigError(f"{source}: key '{key}' expects {_type_name(tp)}, got {value!r}")

    if tp is Any:
        return value
    if origin is Literal:
        if value in args and type(value) is type(next(a for a in args if a == value)):
            return value
        raise ConfigError(f"{source}: key '{key}' must be one of {list(args)}, got {value!r}")
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            try:
                return _coerce(value, arg, key, source)
            except ConfigError:
                continue
        raise fail()
    if tp is type(None):
        if value is None:
            return None
        raise fail()
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise fail()
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key, source) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{source}: key '{key}' expects {len(args)} items, got {value!r}")
        return tuple(_coerce(v, a, key, source) for v, a in zip(value, args))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise fail()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise fail()
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise fail() from None
        raise fail()
    if tp is str:
        if isinstance(value, str):
            return value
        raise fail()
    raise ConfigError(f"{source}: key '{key}' has an unsupported type {tp!r}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _build(cls: type, data: Mapping[str, Any], prefix: str, source: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: section '{prefix or '<root>'}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(f"{source}: unknown key '{where}' (known: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, key, source)
        else:
            kwargs[name] = _coerce(value, tp, key, source)
    return cls(**kwargs)


def _merge(base: dict, update: Mapping[str, Any]) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def config_to_dict(cfg: Any) -> dict:
    """Nested plain dict (tuples kept) — safe to ship to Ray workers."""
    return dataclasses.asdict(cfg)


def config_from_dict(data: Mapping[str, Any], source: str = "<dict>") -> Config:
    return _build(Config, data, "", source)


def build_dataclass(cls: type, data: Mapping[str, Any], source: str, prefix: str = "") -> Any:
    """Any frozen config dataclass (e.g. a Tune sweep's) from a mapping, checked like :class:`Config`:
    an unknown key or a wrong type is a :class:`ConfigError` naming the key and ``source``."""
    return _build(cls, data, prefix, source)


def drop_unknown_keys(data: Mapping[str, Any], cls: type = Config, prefix: str = "") -> tuple[dict, list[str]]:
    """``(known part of data, dropped 'section.key' names)`` — for configs saved by older versions."""
    hints = typing.get_type_hints(cls)
    kept: dict[str, Any] = {}
    dropped: list[str] = []
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in hints:
            dropped.append(key)
        elif dataclasses.is_dataclass(hints[name]) and isinstance(value, Mapping):
            kept[name], sub = drop_unknown_keys(value, hints[name], key)
            dropped.extend(sub)
        else:
            kept[name] = value
    return kept, dropped


def flatten_config(cfg: Config) -> dict[str, Any]:
    """``{"section.field": value}`` for MLflow params."""
    flat: dict[str, Any] = {}
    for section, values in config_to_dict(cfg).items():
        for name, value in values.items():
            flat[f"{section}.{name}"] = value
    return flat


def training_cpus(cfg: Config) -> float:
    """Ray CPUs a training run holds: its train workers, plus the Ray Data decode actors when they feed it
    (``data.loader: ray``)."""
    tc, dc = cfg.train, cfg.data
    decode = dc.map_actors * dc.map_num_cpus if dc.loader == "ray" else 0.0
    return tc.num_workers * tc.cpus_per_worker + decode


GPUS_PER_TRAIN_WORKER = 1.0  # Ray Train's ScalingConfig(use_gpu=True) reserves one GPU per worker


def training_gpus(cfg: Config) -> float:
    """Ray GPUs a training run holds: one per train worker with ``train.use_gpu``, else none."""
    return cfg.train.num_workers * GPUS_PER_TRAIN_WORKER if cfg.train.use_gpu else 0.0


def with_absolute_paths(cfg: Config) -> Config:
    """The weights and data paths a training run's workers read, made absolute on the driver: a job runs in
    an extracted copy of the working dir and Ray workers start elsewhere, so a relative path would point
    at nothing there (a URI, ``s3://...``, passes through)."""
    def absolute(path: str) -> str:
        return str(Path(path).resolve()) if path and "://" not in path else path

    return dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, pretrained=absolute(cfg.model.pretrained)),
        train=dataclasses.replace(cfg.train, val_root=absolute(cfg.train.val_root)),
        teacher=dataclasses.replace(cfg.teacher, checkpoint=absolute(cfg.teacher.checkpoint),
                                    pretrained=absolute(cfg.teacher.pretrained),
                                    embeddings=absolute(cfg.teacher.embeddings)))


def preset_path(name_or_path: str | Path, folder: Path = PRESET_DIR, kind: str = "preset") -> Path:
    """A preset name (``tiny``) resolves to ``<folder>/tiny.yaml`` (``kdtrack/configs``); a path is used as is."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        return path
    candidate = folder / f"{name_or_path}.yaml"
    if not candidate.exists():
        known = sorted(p.stem for p in folder.glob("*.yaml"))
        raise ConfigError(f"unknown {kind} '{name_or_path}' (known: {', '.join(known)})")
    return candidate


def read_yaml(path: Path) -> dict:
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=1e-3"`` -> (["train", "lr"], 0.001); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.field=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) < 2 or not all(parts):
        raise ConfigError(f"--set {text!r}: key must look like section.field")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: invalid value: {exc}") from exc
    if isinstance(value, str) and raw.strip() == "":
        value = ""
    return parts, value


def load_config(preset: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults <- preset YAML (with optional ``base:`` chain) <- ``--set`` overrides."""
    data: dict = {}
    source = "<defaults>"
    if preset is not None:
        path = preset_path(preset)
        data, source = _read_with_bases(path, seen=()), str(path)
        _build(Config, data, "", source)  # unknown keys / types reported against the file
    cfg = _build(Config, _merge_overrides(data, overrides), "", source)
    check_ranges(cfg, source, overrides)
    return cfg


def apply_overrides(cfg: Config, overrides: Sequence[str]) -> Config:
    """``--set`` overrides on a config that exists already (a checkpoint's), checked as :func:`load_config`
    checks them (an unknown key, a wrong type or a value out of range names the ``--set``)."""
    out = _build(Config, _merge_overrides(config_to_dict(cfg), overrides), "", "<config>")
    check_ranges(out, "<config>", overrides)
    return out


def check_ranges(cfg: Config, source: str = "<config>", overrides: Sequence[str] = ()) -> None:
    """Every field inside its range (``kdtrack.config_checks.RULES``), on the driver before any work: the
    first value out of range is a :class:`ConfigError` naming the field, the value, the range and where the
    value came from (the ``--set`` that gave it, else ``source``, the preset file)."""
    broken = range_violations(cfg)
    if broken:
        field_name, message = broken[0]
        raise ConfigError(f"{_value_source(field_name, source, overrides)}: {message}")


def check_training(cfg: Config, source: str = "<config>", overrides: Sequence[str] = ()) -> None:
    """:func:`check_ranges` and the rules between fields that a training run needs
    (``kdtrack.config_checks.training_violations``), before Ray reserves anything for it."""
    check_ranges(cfg, source, overrides)
    broken = training_violations(cfg)
    if broken:
        field_name, message = broken[0]
        raise ConfigError(f"{_value_source(field_name, source, overrides)}: {message}")


def _value_source(field_name: str, source: str, overrides: Sequence[str]) -> str:
    """Where a field's value came from: the last ``--set`` of it (or of its section), else ``source``."""
    for text in reversed(overrides):
        key = ".".join(parse_override(text)[0])
        if field_name == key or field_name.startswith(key + "."):
            return f"--set {text.strip()}" + (f" (on {source})" if source != "<config>" else "")
    return source


def _merge_overrides(data: dict, overrides: Sequence[str]) -> dict:
    for text in overrides:
        parts, value = parse_override(text)
        nested: Any = value
        for part in reversed(parts):
            nested = {part: nested}
        data = _merge(data, nested)
        _build(Config, data, "", f"--set {text}")
    return data


def _read_with_bases(path: Path, seen: tuple[Path, ...]) -> dict:
    if path in seen:
        raise ConfigError(f"{path}: circular 'base:' chain")
    data = read_yaml(path)
    base = data.pop("base", None)
    if base is None:
        _build(Config, data, "", str(path))
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: 'base' must be a preset name or path, got {base!r}")
    base_path = preset_path(base) if not base.endswith((".yaml", ".yml")) else (path.parent / base)
    merged = _merge(_read_with_bases(base_path, seen + (path,)), data)
    _build(Config, merged, "", str(path))
    return merged


def to_plain(obj: Any) -> Any:
    """Tuples (and lists) as lists, recursively: a config dict as YAML / JSON / ``weights_only`` pickles
    hold it, and as it compares with one read back from them."""
    if isinstance(obj, Mapping):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


def config_yaml(cfg: Config) -> str:
    """The resolved config as plain YAML (a preset that :func:`load_config` reads back as it is)."""
    return yaml.safe_dump(to_plain(config_to_dict(cfg)), sort_keys=False)


def dump_config(cfg: Config, path: str | Path, header: str = "") -> None:
    """Write the resolved config as YAML (atomically), after ``header`` (comment lines) when given."""
    from kdtrack.io import atomic_write_text

    atomic_write_text(path, header + config_yaml(cfg))
