# Summaries, figures and the report.


def all_targets():
    targets = [units_path(*entry) for entry in layer_entries()]
    targets += [f"results/{d}/{m}/{a}/attack_stats.csv" for d, m, a in chains()]
    return targets
