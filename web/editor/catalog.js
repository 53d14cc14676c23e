// The catalogue page: filters the image cards by text and by input/output mime type.
const text = document.getElementById("filter-text");
const selects = [...document.querySelectorAll("#filters select")];
const cards = [...document.querySelectorAll(".card")];
const count = document.getElementById("filter-count");

function apply() {
  const words = text.value.toLowerCase().split(/\s+/).filter(Boolean);
  let shown = 0;
  for (const card of cards) {
    const matches =
      words.every((word) => card.dataset.text.includes(word)) &&
      selects.every((select) => !select.value || card.dataset[select.dataset.kind].split(" ").includes(select.value));
    card.hidden = !matches;
    shown += matches;
  }
  count.textContent = `${shown} of ${cards.length} images`;
}

text.addEventListener("input", apply);
for (const select of selects) select.addEventListener("change", apply);
apply();
