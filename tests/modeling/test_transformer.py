"""SamAttention's folded paths when the prompt-token count is known only at run time."""

import numpy as np
import pytest
import tensorflow as tf

from tf_sam.modeling.transformer import SamAttention


def _attention(width=64, heads=4, rate=2):
    attention = SamAttention(width, heads, rate)
    attention.build()
    rng = np.random.default_rng(0)
    for weight in attention.weights:
        weight.assign(rng.standard_normal(weight.shape).astype("float32") * 0.2)
    return attention


def test_vit_b_decoder_shapes_fold_up_to_a_few_points():
    # The exported decoders (SavedModel, TFLite) trace with any number of points: without a
    # run-time plan their cross attentions would always project the 4096 image tokens.
    attention = SamAttention(256, 8, 2)
    tokens = tf.TensorSpec((None, 1, None, 256))
    image = tf.TensorSpec((None, 1, 4096, 256))
    plan, limit = attention._runtime_plan(tokens, image)
    assert plan == "few_queries" and limit >= 5 + 2 + 1  # output tokens, a box, a click
    plan, limit = attention._runtime_plan(image, tokens)
    assert plan == "few_keys" and limit >= 8
    assert attention._runtime_plan(tf.TensorSpec((1, 1, 7, 256)), image) is None  # static: `_plan` decides


@pytest.mark.filterwarnings("ignore:You are using a softmax over axis")  # the 1-key reference
@pytest.mark.parametrize("tokens_are_queries", [True, False])
def test_run_time_choice_matches_the_projected_path_on_both_sides_of_the_limit(tokens_are_queries):
    attention = _attention()
    width, image_tokens = attention.hidden_size, 256
    token_spec = tf.TensorSpec((1, 1, None, width))
    image_spec = tf.TensorSpec((1, 1, image_tokens, width))
    specs = (token_spec, image_spec) if tokens_are_queries else (image_spec, token_spec)
    plan, limit = attention._runtime_plan(*specs)
    assert plan == ("few_queries" if tokens_are_queries else "few_keys")

    @tf.function(input_signature=[specs[0], specs[1]])
    def attend(query, key):
        return attention(query, key, key)

    rng = np.random.default_rng(1)
    image = tf.constant(rng.standard_normal((1, 1, image_tokens, width)).astype("float32"))
    for count in (1, limit, limit + 1, 3 * limit):
        tokens = tf.constant(rng.standard_normal((1, 1, count, width)).astype("float32"))
        query, key = (tokens, image) if tokens_are_queries else (image, tokens)
        expected = attention._attend_projected(query, key, key)
        np.testing.assert_allclose(attend(query, key), expected, atol=2e-5, err_msg=f"{count} tokens")
    (concrete,) = attend._list_all_concrete_functions()  # one trace serves every count
    assert {"If", "StatelessIf"} & {op.type for op in concrete.graph.get_operations()}
