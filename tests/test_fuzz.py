"""Fuzz tests: arbitrary index rows and config values give a result or a documented error,
never a traceback from deep inside a library."""

import copy
import csv
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from advdissect.data.broden import INDEX_COLUMNS, parse_index
from advdissect.errors import ConfigError, DatasetError
from advdissect.study import config as adconfig

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = adconfig.load_schema()
DEFAULT = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())

cell = st.one_of(
    st.just(""),
    st.sampled_from(
        [
            "0",
            "1",
            "17",
            "-3",
            "300;301",
            "a.png",
            "x/b.png;x/c.png",
            "../up.png",
            "/abs.png",
            "train",
            "val",
            "test",
            "112",
            "224",
            "nan",
            "1e3",
            ";",
            " ; ",
        ]
    ),
    st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=12),
)
row = st.fixed_dictionaries({column: cell for column in INDEX_COLUMNS})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(row, min_size=0, max_size=5))
def test_index_rows_parse_or_raise_a_dataset_error(tmp_path, rows):
    path = tmp_path / "index.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=INDEX_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    try:
        table = parse_index(path)
    except DatasetError as error:
        assert str(path) in str(error)
    else:
        assert len(table.frame) == len(rows)


json_value = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-5, 300),
        st.floats(allow_nan=True),
        st.sampled_from(["", "2/255", "x", "resnet18", "layer4", "self", "clean", "fgsm", "1/0"]),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(
            st.sampled_from(["method", "eps", "arch", "layers", "source", "quantile", "x", "seed"]),
            children,
            max_size=3,
        ),
    ),
    max_leaves=8,
)
paths = st.sampled_from(
    [
        ("seed",),
        ("datasets", "synthetic", "shard_size"),
        ("datasets", "synthetic", "split"),
        ("datasets", "synthetic", "synthetic"),
        ("models", "resnet18", "layers"),
        ("models", "resnet18", "weights"),
        ("models", "resnet18", "num_classes"),
        ("attacks", "fgsm_2"),
        ("attacks", "fgsm_2", "eps"),
        ("attacks", "pgd_8", "steps"),
        ("dissection", "quantile"),
        ("dissection",),
        ("figures", "style"),
        ("compute", "gpus"),
        ("unknown",),
    ]
)


@settings(max_examples=300, deadline=None)
@given(edits=st.lists(st.tuples(paths, json_value), min_size=1, max_size=3))
def test_config_values_validate_or_raise_a_config_error(edits):
    config = copy.deepcopy(DEFAULT)
    for path, value in edits:
        node = config
        for key in path[:-1]:
            node = node.setdefault(key, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node[path[-1]] = value
    try:
        adconfig.validate(config, SCHEMA)
        adconfig.check_semantics(_with_defaults(config))
    except ConfigError as error:
        message = str(error)
        assert message and "\n" not in message


def _with_defaults(config):
    adconfig.fill_defaults(config)
    return config
