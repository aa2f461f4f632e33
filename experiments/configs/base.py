"""Defaults shared by every experiment (not runnable on its own: it has no data).

Keys the library reads take their values from :mod:`mmjax.train.defaults` (written there once,
also what a config without the key gets); the rest are this project's choices.
"""
import ml_collections

from mmjax.train.defaults import DEFAULTS as D


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.description = ""
    c.seed = D["seed"]
    c.total_steps = 1000
    c.batch_size = 64            # global, over all processes and devices
    c.log_every = D["log_every"]
    c.eval_every = D["eval_every"]      # 0: only at the end
    c.eval_steps = D["eval_steps"]      # 0: the whole eval split
    # "validation": train-time evals and the "best" checkpoint (held out of train when absent)
    c.eval_split = D["eval_split"]
    c.test_split = D["test_split"]      # "test": evaluated once, from the selected checkpoint ("" : never)
    c.train_split = D["train_split"]    # a tfds split string: "train[:10%]" trains on a labelled subset
    c.checkpoint_every = D["checkpoint_every"]
    c.tensorboard = D["tensorboard"]
    # gs:// workdirs: seconds the run's lease lives without renewal; a run killed with kill -9 leaves
    # its lease, and another run may take the workdir over this long after the last renewal.
    c.workdir_lease_s = D["workdir_lease_s"]

    c.data = ml_collections.ConfigDict(D["data"])

    c.model = ml_collections.ConfigDict()
    c.model.placement = "middle"   # early | middle | late
    c.model.encoders = ml_collections.ConfigDict()
    c.model.fusion = "concat"
    c.model.fusion_config = ml_collections.ConfigDict({"out_dim": 128})
    c.model.head_hidden = ()
    c.model.dropout_rate = 0.0
    c.model.dtype = "float32"      # compute dtype; "bfloat16" for mixed precision
    c.model.param_dtype = "float32"

    c.loss = ml_collections.ConfigDict()
    c.loss.name = D["loss"]["name"]                      # softmax_xent | sigmoid_bce
    c.loss.label_smoothing = D["loss"]["label_smoothing"]
    c.loss.class_weights = D["loss"]["class_weights"]    # () = none, else one weight per class

    c.optim = ml_collections.ConfigDict()
    c.optim.name = D["optim"]["name"]
    c.optim.learning_rate = D["optim"]["learning_rate"]
    c.optim.schedule = D["optim"]["schedule"]
    c.optim.warmup_steps = D["optim"]["warmup_steps"]
    c.optim.end_lr_factor = D["optim"]["end_lr_factor"]
    c.optim.weight_decay = D["optim"]["weight_decay"]
    c.optim.b1 = D["optim"]["b1"]
    c.optim.b2 = D["optim"]["b2"]
    c.optim.clip_norm = D["optim"]["clip_norm"]
    c.optim.freeze = D["optim"]["freeze"]  # parameter path prefixes, e.g. ("encoder_text",)

    c.train = ml_collections.ConfigDict()
    c.train.grad_accum_steps = D["train"]["grad_accum_steps"]
    c.train.nan_policy = D["train"]["nan_policy"]  # skip | stop
    # every | first | off: host check of each batch's structure, shapes, dtypes and labels
    # against the model spec ("first": only the first batch, for input pipelines known good).
    c.train.validate_batches = D["train"]["validate_batches"]
    # every | first | off: NaN/Inf in the (unmasked) inputs on the host, so a bad batch is
    # reported by name. "first" by default: a scan of every batch costs host time on the hot
    # path, and a non-finite loss is caught on device anyway (nan_policy skips or stops).
    c.train.check_finite = D["train"]["check_finite"]

    c.parallel = ml_collections.ConfigDict()
    c.parallel.mode = D["parallel"]["mode"]  # auto | single | pmap | sharded
    c.parallel.mesh = ml_collections.ConfigDict(D["parallel"]["mesh"])
    # Slices each mesh axis spans (TPU multislice, GPU nodes over the data-center network), e.g.
    # {data: 2}: parallel.mesh is the whole mesh, data and fsdp may cross slices, tensor may not.
    c.parallel.dcn_mesh = ml_collections.ConfigDict(D["parallel"]["dcn_mesh"])
    c.parallel.rules = D["parallel"]["rules"]  # () = mmjax.sharding.LOGICAL_RULES

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.keep = D["checkpoint"]["keep"]
    # What ranks checkpoints ("best"): "" = the task's (accuracy / max for a softmax classifier,
    # loss / min for sigmoid_bce, mean_R@1 / max for contrastive, cider_d / max for captioning).
    c.checkpoint.best_metric = D["checkpoint"]["best_metric"]
    c.checkpoint.best_mode = D["checkpoint"]["best_mode"]  # max | min; "" = the task's (max for a named metric)
    # Orbax writes in a background thread while training goes on; the loop waits for the last save
    # before it exits (and on SIGTERM). False: every save blocks the step loop until committed.
    c.checkpoint.async_save = D["checkpoint"]["async_save"]

    # Initialise part of the model from a checkpoint (path) or offline pretrained weights
    # (pretrained: "minilm" | "efficientnet_lite0"; target e.g. "encoder_text_0").
    c.init_from = ml_collections.ConfigDict(D["init_from"])
    return c
