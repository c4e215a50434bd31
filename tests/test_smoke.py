from openfeature_canary import load_plan


def test_example_plan_loads_both_flags(example_plan_path):
    plan = load_plan(example_plan_path)
    assert list(plan.flags) == ["dataservice-read-canary", "dataservice-user-read-canary"]
