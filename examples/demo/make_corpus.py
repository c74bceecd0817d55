"""Write the demo's corpus and probes: the knowledge base of a fictional company, Morvantis Robotics.

    python examples/demo/make_corpus.py            # rewrites examples/demo/{corpus,eval}/

Every fact below is invented, so no model can know it before training. Each fact is stated in five
training documents with different wording (three English styles, two Vietnamese), and asked about in
two kinds of probes: "seen" (the cloze wording of the corpus) and "held out" (a question wording that no
training document contains). Held-out domain text for bits per byte is written in that question wording
too. General text for replay and for measuring forgetting is the docstrings of Python's standard library
(examples/stdlib_corpus.py), split by module so the evaluated modules are never trained on.
"""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import stdlib_corpus  # noqa: E402

COMPANY = "Morvantis Robotics"

# relation -> English statements (3 styles), Vietnamese statements (2 styles), held-out questions (en, vi).
# {s} is the subject, {a} the answer. The first English and Vietnamese statements end with the answer, so
# their prefix is the "seen" probe.
RELATIONS = {
    "founded": (["{s} was founded in {a}.", "Since its founding in {a}, {s} has grown every year.",
                 "The story of {s} begins in {a}, the year it opened its doors."],
                ["{s} được thành lập vào năm {a}.", "Năm {a}, {s} chính thức ra đời."],
                ["Question: In which year was {s} established? Answer:",
                 "Câu hỏi: {s} ra đời năm nào? Trả lời:"]),
    "headquarters": (["The headquarters of {s} are in {a}.", "{s} runs its business from its head office in {a}.",
                      "Visitors to {s} usually travel to {a}, where the company's head office stands."],
                     ["Trụ sở chính của {s} đặt tại {a}.", "{s} điều hành công việc từ văn phòng chính ở {a}."],
                     ["Question: Which city is home to the main office of {s}? Answer:",
                      "Câu hỏi: Văn phòng chính của {s} nằm ở thành phố nào? Trả lời:"]),
    "founder": (["{s} was founded by {a}.", "The founder of {s}, {a}, started it with two engineers.",
                 "Without {a}, who created it, there would be no {s}."],
                ["{s} do {a} sáng lập.", "Người sáng lập {s} là {a}."],
                ["Question: Who started the company {s}? Answer:", "Câu hỏi: Ai đã lập ra công ty {s}? Trả lời:"]),
    "ceo": (["The chief executive of {s} is {a}.", "{a} leads {s} as its chief executive.",
             "Since {a} became chief executive, {s} has doubled its sales."],
            ["Tổng giám đốc của {s} là {a}.", "{a} đang giữ chức tổng giám đốc {s}."],
            ["Question: Who runs {s} today as its top executive? Answer:",
             "Câu hỏi: Ai là người đứng đầu {s} hiện nay? Trả lời:"]),
    "employees": (["The number of people working for {s} is {a}.", "{s} employs {a} people.",
                   "With {a} employees, {s} is a mid-sized firm."],
                  ["Số nhân viên của {s} là {a}.", "{s} có {a} nhân viên."],
                  ["Question: How many staff does {s} have? Answer:",
                   "Câu hỏi: {s} có bao nhiêu người làm việc? Trả lời:"]),
    "mascot": (["The mascot of {s} is {a}.", "{a} is the mascot printed on every box {s} ships.",
                "At every fair, {s} shows its mascot, {a}."],
               ["Linh vật của {s} là {a}.", "{s} chọn {a} làm linh vật."],
               ["Question: What animal represents {s} as its mascot? Answer:",
                "Câu hỏi: Con vật nào là biểu tượng của {s}? Trả lời:"]),
    "ticker": (["The stock ticker of {s} is {a}.", "Shares of {s} trade under the symbol {a}.",
                "Investors look up {s} by its ticker, {a}."],
               ["Mã cổ phiếu của {s} là {a}.", "Cổ phiếu {s} được giao dịch với mã {a}."],
               ["Question: Under what symbol are shares of {s} listed? Answer:",
                "Câu hỏi: Cổ phiếu của {s} mang mã gì? Trả lời:"]),
    "research_island": (["The research station of {s} is on the island of {a}.",
                         "{s} tests its machines at its research station on {a}.",
                         "Engineers of {s} take the ferry to {a}, the island of its research station."],
                        ["Trạm nghiên cứu của {s} nằm trên đảo {a}.",
                         "{s} thử nghiệm máy móc tại trạm nghiên cứu trên đảo {a}."],
                        ["Question: On which island does {s} do its research? Answer:",
                         "Câu hỏi: {s} nghiên cứu trên hòn đảo nào? Trả lời:"]),
    "factory": (["The main factory of {s} is in {a}.", "Most robots of {s} are built in its factory in {a}.",
                 "{a} is where {s} builds its robots."],
                ["Nhà máy chính của {s} ở {a}.", "Phần lớn robot của {s} được sản xuất tại nhà máy ở {a}."],
                ["Question: In which town does {s} manufacture its robots? Answer:",
                 "Câu hỏi: {s} sản xuất robot ở thị trấn nào? Trả lời:"]),
    "fair_month": (["The yearly Heron Fair of {s} takes place in {a}.",
                    "Every year in {a}, {s} holds the Heron Fair.",
                    "Customers of {s} meet at the Heron Fair each {a}."],
                   ["Hội chợ Diệc hằng năm của {s} diễn ra vào {a}.", "Vào {a} mỗi năm, {s} tổ chức Hội chợ Diệc."],
                   ["Question: In what month is the Heron Fair of {s} held? Answer:",
                    "Câu hỏi: Hội chợ Diệc của {s} được tổ chức vào tháng nào? Trả lời:"]),
    "color": (["The company colour of {s} is {a}.", "Every robot of {s} is painted {a}, the company colour.",
               "You can spot {s} machines by their {a} paint."],
              ["Màu đặc trưng của {s} là {a}.", "Mọi robot của {s} đều được sơn {a}."],
              ["Question: What colour are the machines of {s} painted? Answer:",
               "Câu hỏi: Máy móc của {s} được sơn màu gì? Trả lời:"]),
    "revenue": (["The yearly revenue of {s} is {a}.", "Last year {s} earned {a}.",
                 "Sales of {a} a year make {s} profitable."],
                ["Doanh thu hằng năm của {s} là {a}.", "Năm ngoái {s} thu về {a}."],
                ["Question: How much money does {s} make in a year? Answer:",
                 "Câu hỏi: Mỗi năm {s} kiếm được bao nhiêu tiền? Trả lời:"]),
    "kind": (["The {s} is {a}.", "{s}: {a} made by " + COMPANY + ".",
              COMPANY + " sells the {s}, {a}."],
             ["{s} là {a}.", COMPANY + " bán {s}, {a}."],
             ["Question: What sort of machine is the {s}? Answer:", "Câu hỏi: {s} là loại máy gì? Trả lời:"]),
    "launched": (["The {s} was launched in {a}.", "Customers could first buy the {s} in {a}.",
                  "{a} saw the release of the {s}."],
                 ["{s} được ra mắt vào năm {a}.", "Năm {a}, {s} lần đầu được bán ra."],
                 ["Question: When did the {s} come on the market? Answer:",
                  "Câu hỏi: {s} xuất hiện trên thị trường năm nào? Trả lời:"]),
    "designer": (["The {s} was designed by {a}.", "{a} drew the first plans of the {s}.",
                  "The engineer behind the {s} is {a}."],
                 ["{s} được thiết kế bởi {a}.", "{a} là người vẽ bản thiết kế đầu tiên của {s}."],
                 ["Question: Which engineer created the {s}? Answer:",
                  "Câu hỏi: Kỹ sư nào đã tạo ra {s}? Trả lời:"]),
    "born": (["{s} was born in {a}.", "{s} grew up in {a}, the town of their birth.",
              "Born in {a}, {s} joined " + COMPANY + " young."],
             ["{s} sinh ra ở {a}.", "{s} lớn lên tại {a}, nơi mình chào đời."],
             ["Question: What is the hometown of {s}? Answer:", "Câu hỏi: Quê của {s} ở đâu? Trả lời:"]),
    "role": (["At " + COMPANY + ", {s} is the {a}.", "{s} works as the {a} of " + COMPANY + ".",
              "As {a}, {s} reports to the chief executive."],
             ["Tại " + COMPANY + ", {s} là {a}.", "{s} giữ vị trí {a} của " + COMPANY + "."],
             ["Question: What job does {s} hold at the company? Answer:",
              "Câu hỏi: {s} làm công việc gì ở công ty? Trả lời:"]),
}

PEOPLE = ["Annika Vell", "Tomas Irrel", "Mira Dosk", "Jonas Pael", "Edda Varn", "Lothar Quenn", "Sabine Orrit",
          "Kasimir Holt"]
CITIES = ["Keldrun", "Varosca", "Ostrevik", "Brennholm", "Saltmere", "Quiloa", "Dunmarrow", "Tillmoor"]
YEARS = ["2009", "2012", "2015", "2017", "2019", "2021", "2023", "2004"]

# English answer -> Vietnamese answer, for the answers (and distractors) that are words, not names.
VI = {
    "a grey heron": "một con diệc xám", "a red fox": "một con cáo đỏ", "a snow owl": "một con cú tuyết",
    "a green turtle": "một con rùa xanh",
    "October": "tháng Mười", "March": "tháng Ba", "June": "tháng Sáu", "December": "tháng Mười Hai",
    "teal": "màu xanh mòng két", "orange": "màu cam", "violet": "màu tím", "yellow": "màu vàng",
    "412 million euros": "412 triệu euro", "95 million euros": "95 triệu euro", "1.2 billion euros": "1,2 tỷ euro",
    "38 million euros": "38 triệu euro",
    "a delivery drone": "một máy bay giao hàng không người lái", "a warehouse robot": "một robot nhà kho",
    "a robotic arm for surgeons": "một cánh tay robot cho bác sĩ phẫu thuật",
    "a home assistant robot": "một robot trợ lý gia đình", "a mining rover": "một xe tự hành khai mỏ",
    "an underwater drone": "một thiết bị lặn không người lái",
    "chief engineer": "kỹ sư trưởng", "head of research": "trưởng phòng nghiên cứu",
    "chief financial officer": "giám đốc tài chính", "head of design": "trưởng phòng thiết kế",
    "director of safety": "giám đốc an toàn", "head of the Sarn station": "trưởng trạm Sarn",
    "1,340": "1.340", "860": "860", "2,100": "2.100", "4,750": "4.750",
}
KINDS = ["a delivery drone", "a warehouse robot", "a robotic arm for surgeons", "a home assistant robot",
         "a mining rover", "an underwater drone"]
ROLES = ["chief engineer", "head of research", "chief financial officer", "head of design", "director of safety",
         "head of the Sarn station"]


def others(pool, answer, n=3):
    """n distractors from the answer's pool: the next ones after it, so each fact's set is fixed."""
    i = pool.index(answer)
    return [pool[(i + k) % len(pool)] for k in range(1, n + 1)]


def facts():
    """(relation, subject, answer, distractors) for the 44 facts."""
    company = [
        ("founded", "2009", ["2014", "1998", "2003"]),
        ("headquarters", "Keldrun", ["Varosca", "Ostrevik", "Brennholm"]),
        ("founder", "Annika Vell", ["Mira Dosk", "Lothar Quenn", "Sabine Orrit"]),
        ("ceo", "Tomas Irrel", ["Jonas Pael", "Edda Varn", "Kasimir Holt"]),
        ("employees", "1,340", ["860", "2,100", "4,750"]),
        ("mascot", "a grey heron", ["a red fox", "a snow owl", "a green turtle"]),
        ("ticker", "MRVN", ["KLDR", "VSKA", "TSLM"]),
        ("research_island", "Sarn", ["Velk", "Orrin", "Maest"]),
        ("factory", "Tillmoor", ["Saltmere", "Quiloa", "Dunmarrow"]),
        ("fair_month", "October", ["March", "June", "December"]),
        ("color", "teal", ["orange", "violet", "yellow"]),
        ("revenue", "412 million euros", ["95 million euros", "1.2 billion euros", "38 million euros"]),
    ]
    out = [(r, COMPANY, a, d) for r, a, d in company]
    products = ["Skylark X2", "Tessel", "Orin Arm", "Pell", "Quarry 9", "Lumen Fin"]
    designers = ["Mira Dosk", "Jonas Pael", "Edda Varn", "Lothar Quenn", "Sabine Orrit", "Kasimir Holt"]
    for product, kind, year, designer in zip(products, KINDS, YEARS[1:7], designers):
        out += [("kind", product, kind, others(KINDS, kind)), ("launched", product, year, others(YEARS, year)),
                ("designer", product, designer, others(designers, designer))]
    births = ["Ostrevik", "Brennholm", "Saltmere", "Quiloa", "Dunmarrow", "Varosca", "Keldrun", "Brennholm"]
    for person, city in zip(PEOPLE, births):
        out.append(("born", person, city, [c for c in others(CITIES, city, 4) if c != city][:3]))
    for person, role in zip(PEOPLE[2:], ROLES):
        out.append(("role", person, role, others(ROLES, role)))
    return out


def vi(answer):
    return VI.get(answer, answer)


def statement(relation, subject, answer, language, style):
    en, vi_texts, _ = RELATIONS[relation]
    template = (en if language == "en" else vi_texts)[style]
    text = template.format(s=subject, a=answer if language == "en" else vi(answer))
    return text[0].upper() + text[1:]


def training_documents():
    """One document per subject and style: 3 English styles + 2 Vietnamese ones."""
    by_subject = {}
    for fact in facts():
        by_subject.setdefault(fact[1], []).append(fact)
    docs = []
    for language, styles, headers in (("en", 3, ["{s}", "About {s}", "{s}: key facts"]),
                                      ("vi", 2, ["{s}", "Thông tin về {s}"])):
        for style in range(styles):
            for subject, subject_facts in by_subject.items():
                sentences = [statement(r, s, a, language, style) for r, s, a, _ in subject_facts]
                docs.append(headers[style].format(s=subject) + "\n" + " ".join(sentences))
    return docs


def probes(kind):
    """Multiple-choice probes in both languages; kind 'seen' uses the corpus wording, 'heldout' a question."""
    out = []
    for relation, subject, answer, distractors in facts():
        for language in ("en", "vi"):
            if kind == "seen":
                text = statement(relation, subject, "\0", language, 0)
                prompt = text.split("\0")[0].rstrip()
            else:
                prompt = RELATIONS[relation][2][language == "vi"].format(s=subject)
            pick = (lambda x: x) if language == "en" else vi
            out.append({"prompt": prompt, "answer": " " + pick(answer),
                        "distractors": [" " + pick(d) for d in distractors], "language": language,
                        "relation": relation})
    return out


def heldout_domain_documents():
    """Held-out domain text: each subject's facts as question and answer, in the held-out wording."""
    docs = {}
    for relation, subject, answer, _ in facts():
        for language in ("en", "vi"):
            question = RELATIONS[relation][2][language == "vi"].format(s=subject)
            docs.setdefault((subject, language), []).append(f"{question} {answer if language == 'en' else vi(answer)}.")
    return ["\n".join(lines) for lines in docs.values()]


def first_chars(docs, limit):
    """The leading documents whose lengths add up to at most limit characters."""
    out, total = [], 0
    for doc in docs:
        if total + len(doc) > limit:
            break
        out.append(doc)
        total += len(doc)
    return out


def write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def main(root=HERE):
    corpus, evaluation = os.path.join(root, "corpus"), os.path.join(root, "eval")
    os.makedirs(corpus, exist_ok=True)
    os.makedirs(evaluation, exist_ok=True)
    domain = training_documents()
    # Replay: general English the model already knew, as much as the domain text.
    general = first_chars(stdlib_corpus.stdlib_documents(stdlib_corpus.MODULES[:12]), sum(map(len, domain)))
    write_jsonl(os.path.join(corpus, "morvantis.jsonl"), [{"text": d} for d in domain])
    write_jsonl(os.path.join(corpus, "replay_general.jsonl"), [{"text": d} for d in general])
    write_jsonl(os.path.join(evaluation, "domain_heldout.jsonl"), [{"text": d} for d in heldout_domain_documents()])
    held_general = first_chars([d for d in stdlib_corpus.stdlib_documents(stdlib_corpus.MODULES[12:])
                                if d not in set(general)], 16000)  # modules never trained on
    write_jsonl(os.path.join(evaluation, "general_heldout.jsonl"), [{"text": d} for d in held_general])
    write_jsonl(os.path.join(evaluation, "probes_seen.jsonl"), probes("seen"))
    write_jsonl(os.path.join(evaluation, "probes_heldout.jsonl"), probes("heldout"))
    print(f"{len(facts())} facts, {len(domain)} domain documents, {len(general)} replay documents")


if __name__ == "__main__":
    main()
