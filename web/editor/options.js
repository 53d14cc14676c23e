// The option form, generated from an image's catalogue schema (docs/catalog.md, "Options").

/** Check a text option against its pattern (whole value; the empty string is always accepted) as the
 * edge does. Not the `pattern` attribute: browsers compile it with the `v` flag, under which a
 * catalogue pattern such as `[-A-Za-z0-9_=+,.:/ ]*` is invalid, and an invalid pattern accepts anything. */
function checkPattern(control, pattern) {
  let regex;
  try {
    regex = new RegExp(`^(?:${pattern})$`, "u");
  } catch {
    return; // the edge still checks it
  }
  const check = () => control.setCustomValidity(control.value === "" || regex.test(control.value) ? "" : `must match ${pattern}`);
  control.addEventListener("input", check);
  queueMicrotask(check);
}

/** Fill `form` with one labelled control per option; `values` are the current values by name. */
export function renderOptions(form, options, values) {
  form.replaceChildren();
  for (const option of options) {
    const id = `option-${option.name}`;
    const field = document.createElement("div");
    field.className = "field";
    const label = document.createElement("label");
    label.htmlFor = id;
    label.textContent = option.label || option.name;
    const value = option.name in values ? values[option.name] : option.default;
    let control;
    if (option.type === "choice") {
      control = document.createElement("select");
      for (const choice of option.choices) {
        control.append(new Option(choice === "" ? "(none)" : choice, choice, false, choice === value));
      }
    } else if (option.type === "bool") {
      control = document.createElement("input");
      control.type = "checkbox";
      control.checked = Boolean(value);
      field.classList.add("check");
    } else {
      control = document.createElement("input");
      if (option.type === "number") {
        control.type = "number";
        if (option.min !== undefined) control.min = option.min;
        if (option.max !== undefined) control.max = option.max;
        control.step = option.step ?? (option.integer === false ? "any" : 1);
      } else {
        control.type = "text";
        if (option.pattern) checkPattern(control, option.pattern);
        control.maxLength = option.max_length ?? 256;
        control.spellcheck = false;
      }
      control.value = value ?? "";
    }
    control.id = id;
    control.name = option.name;
    control.dataset.type = option.type;
    if (option.help) control.title = option.help;
    if (option.type === "bool") field.append(control, label);
    else field.append(label, control);
    form.append(field);
  }
}

/** The form's values by option name (numbers as numbers, checkboxes as booleans). */
export function readOptions(form) {
  const values = {};
  for (const control of form.elements) {
    if (!control.name) continue;
    const type = control.dataset.type;
    if (type === "bool") values[control.name] = control.checked;
    else if (type === "number") values[control.name] = control.value === "" ? undefined : Number(control.value);
    else values[control.name] = control.value;
  }
  return values;
}

/** The first control whose value the browser finds invalid (min/max/pattern), else null. */
export function invalidOption(form) {
  return [...form.elements].find((control) => control.name && !control.checkValidity()) ?? null;
}
