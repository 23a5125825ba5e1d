"""A reward file for `custom_reward_function.path` in tests: rewards answering with digits."""


def digit_fraction(data_source, solution_str, ground_truth, extra_info=None):
    return sum(c.isdigit() for c in solution_str) / max(len(solution_str), 1)
