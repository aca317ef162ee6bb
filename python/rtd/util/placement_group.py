"""Placement groups need multi-node scheduling, which comes next; each entry point
raises a clear NotImplementedError until then."""


def _not_implemented(what):
    raise NotImplementedError(f"{what}: placement groups are not implemented in rtd yet.")


def placement_group(bundles, strategy="PACK", name="", lifetime=None):
    _not_implemented("rtd.util.placement_group")


def remove_placement_group(placement_group):
    _not_implemented("rtd.util.remove_placement_group")


def placement_group_table(placement_group=None):
    _not_implemented("rtd.util.placement_group_table")


def get_placement_group(placement_group_name):
    _not_implemented("rtd.util.get_placement_group")
