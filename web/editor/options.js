// The option form, generated from an image's catalogue schema (docs/catalog.md, "Options").

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
        if (option.pattern) control.pattern = option.pattern;
        control.maxLength = option.max_length ?? 256;
        control.spellcheck = false;
      }
      control.value = value ?? "";
    }
    control.id = id;
    control.name = option.name;
    control.dataset.type = option.type;
    if (option.description) control.title = option.description;
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

/** The first control whose value the browser finds invalid (min/max/pattern), reported to the user. */
export function invalidOption(form) {
  for (const control of form.elements) {
    if (control.name && !control.checkValidity()) {
      control.reportValidity();
      return control;
    }
  }
  return null;
}
