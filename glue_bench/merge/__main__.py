"""`python -m glue_bench.merge`: every merge method with its parameters and their defaults."""

from glue_bench.merge import METHODS, get_method

get_method("linear")  # registers them all
for method in sorted(METHODS.values(), key=lambda m: m.name):
    base = {"required": ", uses the zoo's base", "optional": ", uses the base with use_base=true"}.get(method.base, "")
    count = f"{method.min_models}" + ("+" if method.max_models is None else
                                      f"-{method.max_models}" if method.max_models != method.min_models else "")
    print(f"{method.name} ({count} models{base}{', seeded' if method.randomized else ''}{''.join(f', needs {k} statistics' for k in method.needs)}): {method.doc}")
    for p in method.params:
        print(f"    {p.name} = {p.default!r}{' (per model)' if p.per_model else ''}: {p.doc}")
