"""`sweep av_digits --fusions all` gives every registered block its av_digits options."""
import mmjax.fusion as fusion
from experiments.commands import sweep
from experiments.configs import av_digits
from mmjax.models import fusion_choice


def test_every_block_has_av_digits_options_that_the_sweep_applies():
    config = av_digits.get_config()
    names = sweep.fusion_names("all", config)
    assert set(names) == set(fusion.names())
    rows = sweep.variants(config, names, baselines=False)
    assert sorted(rows) == sorted(names)
    for name in names:
        entry = av_digits.FUSION_CONFIGS[name]
        assert rows[name].model.fusion == name
        assert rows[name].model.fusion_config.to_dict() == entry, name
        # Every option is a field of the block: a misspelt key fails here, not after a sweep's compile.
        # (late's out_dim is the number of classes, filled in by fusion_choice.resolve.)
        block = fusion.create(name, **{"out_dim": 10, **entry})
        assert all(getattr(block, k) == v for k, v in entry.items()), name
    # fusion="late" alone is decision-level fusion: the sweep no longer sets model.placement for it.
    assert fusion_choice.resolve(rows["late"].model).placement == "late"
    assert rows["late"].model.placement == config.model.placement == "middle"
