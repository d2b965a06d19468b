"""Training batches of one orientation (the official GroupSampler), single and distributed."""
from codetr.data.group_sampler import GroupSampler, aspect_groups


def test_aspect_groups():
    assert aspect_groups([(100, 200), (200, 100), (50, 50), (10, 11)]) == [1, 0, 0, 1]


def test_batches_have_one_orientation_and_cover_every_image():
    groups = [0] * 7 + [1] * 10
    s = GroupSampler(groups, batch_size=2, seed=3)
    idx = list(s)
    assert len(idx) == len(s) == 8 + 10                              # group 0 padded from 7 to 8
    assert set(idx) == set(range(17))
    for k in range(0, len(idx), 2):
        assert groups[idx[k]] == groups[idx[k + 1]]
    s.set_epoch(1)
    assert list(s) != idx and sorted(set(s)) == list(range(17))
    s.set_epoch(0)
    assert list(s) == idx                                             # deterministic per (seed, epoch)


def test_distributed_ranks_split_one_permutation():
    groups = [i % 3 == 0 for i in range(23)]
    ranks = [list(GroupSampler(groups, batch_size=2, num_replicas=3, rank=r, seed=0)) for r in range(3)]
    assert len({len(r) for r in ranks}) == 1
    assert set().union(*map(set, ranks)) == set(range(23))
    for r in ranks:
        for k in range(0, len(r), 2):
            assert groups[r[k]] == groups[r[k + 1]]
